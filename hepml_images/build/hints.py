"""What to do about a failed build step, read from its output.

The step's own error (apt's, pip's) says what failed; for the failures that locked inputs and
TLS proxies make common, this adds what to do: relock, or pass the proxy's CA bundle. The log is
read from its end (the failure is at the end; an earlier step may have printed, and recovered
from, something that looks alike); the text quoted in a hint comes from the log, so it is cut to
a sane length (a log line is the build's output, not ours).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: the longest piece of a log line quoted in a hint
_QUOTE = 80

_APT_VERSION = re.compile(r"E: Version '([^']+)' for '([^']+)' was not found")
_PIP_HASHES = re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES")
_PIP_MISSING = re.compile(r"No matching distribution found for (\S+)")
_TLS = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSL certificate problem")


def _cut(text: str) -> str:
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"


def _apt_version(match: re.Match[str], spec: str) -> str:
    version, package = _cut(match.group(1)), _cut(match.group(2))
    return (
        f"the lock pins {package} {version}, which the package mirror no longer has (Debian's"
        f" mirrors keep only the current point release): run `hepml-images lock {spec}` to"
        " lock what the mirror has now, or build from a snapshot mirror"
    )


def _pip_hashes(_match: re.Match[str], spec: str) -> str:
    return (
        "a downloaded distribution does not have the hash its lock records (the index serves"
        f" other files for that version, or the lock was edited): `hepml-images lock {spec}"
        " --check` shows what moved; relock with `hepml-images lock` if the change is wanted"
    )


def _pip_missing(match: re.Match[str], spec: str) -> str:
    return (
        f"the package index has no {_cut(match.group(1))} for this Python and platform (yanked,"
        f" or the index is another): `hepml-images lock {spec} --check` shows what moved"
    )


def _tls(_match: re.Match[str], _spec: str) -> str:
    return (
        "a TLS certificate was not trusted inside the build: behind a TLS-intercepting proxy,"
        " pass its CA bundle with --ca-bundle PEM (or HEPML_CA_BUNDLE); on Debian the host's"
        " bundle is /etc/ssl/certs/ca-certificates.crt"
    )


_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], str], str]], ...] = (
    (_APT_VERSION, _apt_version),
    (_PIP_HASHES, _pip_hashes),
    (_PIP_MISSING, _pip_missing),
    (_TLS, _tls),
)


def for_log(lines: Sequence[str], spec: str) -> str | None:
    """The hint for the last line of ``lines`` that a known failure matches, else None."""
    for line in reversed(lines):
        for pattern, hint in _RULES:
            match = pattern.search(line)
            if match is not None:
                return hint(match, spec)
    return None
