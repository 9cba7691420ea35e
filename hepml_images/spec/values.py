"""What each kind of spec value may be. Pure.

Every value that ends up in a Dockerfile or a definition file passes one of these checks after
matrix substitution. The checks are allow-lists: a package name is letters, digits and a few
punctuation marks, a path is an absolute path of safe characters, and so on. The renderer still
quotes what it puts on a shell line (defence in depth), but a value that fails here never gets
that far, and the user learns which value was wrong and why.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


class ValueProblem(ValueError):  # noqa: N818 - a problem in a value, reported, not a crash
    """A value that breaks its rule; ``hint`` says what would be accepted."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


#: Most characters of a user's value quoted in a message (a value may be a whole file).
SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr`` of a value for a message, shortened to about ``SHOWN_CHARS`` characters."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    half = SHOWN_CHARS // 2
    return f"{text[:half]}…{text[-half:]} ({len(str(value))} characters)"


_SHELL_CHARS = set("`$;&|<>(){}[]*?!~#'\"\\\n\r\t ")


def _describe_bad(value: str, allowed: str) -> str:
    bad = sorted({ch for ch in value if not re.fullmatch(allowed, ch)})
    listed = ", ".join(repr(ch) for ch in bad[:5])
    return f"{shown(value)} contains characters that are not allowed here ({listed})"


#: Apptainer >= 1.2 replaces ``{{ NAME }}`` anywhere in a definition file by a build argument
#: (and fails the build when none is given). Python's ``\s`` and ``\w`` are wider than Go's
#: ASCII classes, so this finds at least what Apptainer finds.
BUILD_ARG_TEMPLATE = re.compile(r"\{\{\s*\w+\s*\}\}")
#: Characters that end a line somewhere on the way into a definition file: Apptainer splits
#: at \n; Jinja's ``indent`` (and Python's ``splitlines``) also at these.
_OTHER_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def definition_text(value: str, what: str) -> str:
    """``value`` may go into a Singularity definition file as text, without changing its shape.

    Refused: a ``{{ NAME }}`` build-argument template, and a line whose first word starts with
    ``%`` (Apptainer starts a section at any line whose first word, after any white space,
    begins with ``%``; indenting the line does not help).
    """
    template = BUILD_ARG_TEMPLATE.search(value)
    if template:
        raise ValueProblem(
            f"{what} {shown(value)} contains {template.group()!r}, which Apptainer would"
            " replace by a build argument",
            "write it without the double braces, e.g. { {NAME} }",
        )
    for line in value.splitlines():
        if line.lstrip().startswith("%"):
            raise ValueProblem(
                f"{what} {shown(value)}: a line must not start with % ({shown(line.strip())})",
                "in the Singularity definition file it would start a new section",
            )
    return value


_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(?:=[A-Za-z0-9.+~:-]+)?")
_RPM_PACKAGE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def package(value: str, family: str) -> str:
    """A distribution package name, optionally with a version pin."""
    rule = _APT_PACKAGE if family in {"debian", "ubuntu"} else _RPM_PACKAGE
    if not rule.fullmatch(value):
        example = (
            "libhdf5-dev or python3=3.11.2-1"
            if rule is _APT_PACKAGE
            else "hdf5-devel or python3.11"
        )
        if set(value) & _SHELL_CHARS:
            raise ValueProblem(
                _describe_bad(value, r"[A-Za-z0-9_.+=~:-]"), f"a package name looks like {example}"
            )
        raise ValueProblem(
            f"{shown(value)} is not a valid {family} package name",
            f"expected something like {example}",
        )
    return value


_MAJOR_MINOR = re.compile(r"[0-9]+\.[0-9]+")
_RELEASE = re.compile(r"[0-9]+(?:\.[0-9]+){0,3}")


def major_minor(value: str, what: str) -> str:
    """A version written major.minor, such as a Python or CUDA version."""
    if not _MAJOR_MINOR.fullmatch(value):
        raise ValueProblem(
            f"{what} must be written major.minor, got {shown(value)}",
            'for example "3.11" (quoted, so YAML keeps it text)',
        )
    return value


def release(value: str, what: str) -> str:
    """A dotted numeric release such as ``2.18.1`` or ``25.2.30``."""
    if not _RELEASE.fullmatch(value):
        raise ValueProblem(
            f"{what} must be a dotted release number, got {shown(value)}", 'for example "2.18.1"'
        )
    try:
        Version(value)
    except InvalidVersion:  # pragma: no cover - the regex admits only valid versions
        raise ValueProblem(f"{what} {shown(value)} is not a valid version") from None
    return value


def spec_version(value: str) -> str:
    """The environment's own version (PEP 440), used in tags."""
    try:
        Version(value)
    except InvalidVersion:
        raise ValueProblem(
            f"{shown(value)} is not a valid version", 'use a version such as "1.2.0"'
        ) from None
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", value):
        raise ValueProblem(_describe_bad(value, r"[A-Za-z0-9_.+-]"))
    return value


_PATH = re.compile(r"/(?:[A-Za-z0-9._@+-]+/?)*")


def abs_path(value: str, what: str = "path") -> str:
    """An absolute path in the image: safe characters, no `..`."""
    if not value.startswith("/"):
        raise ValueProblem(f"{what} must be absolute, got {shown(value)}", "start it with /")
    if not _PATH.fullmatch(value):
        raise ValueProblem(
            _describe_bad(value, r"[A-Za-z0-9._@+/-]"),
            f"{what} may contain letters, digits and . _ @ + - /",
        )
    if any(part == ".." for part in value.split("/")):
        raise ValueProblem(f"{what} must not contain '..', got {shown(value)}")
    return value.rstrip("/") or "/"


_REL_PATH = re.compile(r"(?:[A-Za-z0-9._@+-]+/)*[A-Za-z0-9._@+-]+")


def rel_path(value: str, what: str = "path") -> str:
    """A relative path beside the spec file: safe characters, no `..`, no leading /."""
    if (
        value.startswith("/")
        or not _REL_PATH.fullmatch(value)
        or any(p == ".." for p in value.split("/"))
    ):
        raise ValueProblem(
            f"{what} must be a path relative to the spec file without '..', got {shown(value)}",
            "put the file next to the spec or in a folder below it",
        )
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_VALUE_BAD = re.compile(r"[`\"\\\n\r]|\$\(")


def env_name(value: str) -> str:
    """An environment variable name."""
    if not _ENV_NAME.fullmatch(value):
        raise ValueProblem(
            f"{shown(value)} is not a valid environment variable name",
            "use letters, digits and _, not starting with a digit",
        )
    return value


def env_value(value: str) -> str:
    """An environment value: may refer to `$VAR`/`${VAR}`, may not run commands or break quotes."""
    match = _ENV_VALUE_BAD.search(value)
    if match:
        raise ValueProblem(
            f"environment value {shown(value)} contains {shown(match.group())},"
            " which is not allowed",
            "values may use $VAR and ${VAR}, but no backquotes, $( ), double quotes,"
            " backslashes or newlines",
        )
    if not value.isprintable():
        raise ValueProblem(
            f"environment value {shown(value)} must be printable text on one line",
            "no tabs, control characters or line separators",
        )
    for ref in re.finditer(r"\$(\{[^}]*\}?|.?)", value):
        body = ref.group(1)
        if not (
            re.fullmatch(r"\{[A-Za-z_][A-Za-z0-9_]*\}", body) or re.fullmatch(r"[A-Za-z_]", body)
        ):
            raise ValueProblem(
                f"environment value {shown(value)} has an unsupported $ expression"
                f" {shown(ref.group())}",
                "write $NAME or ${NAME}; other shell expansions are not allowed",
            )
    return definition_text(value, "environment value")


_LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


def label_key(value: str) -> str:
    """An OCI label key (reverse-DNS style: lower case, digits, dots, dashes)."""
    if not _LABEL_KEY.fullmatch(value):
        raise ValueProblem(
            f"{shown(value)} is not a valid label key",
            "use lower-case reverse-DNS keys such as org.example.owner",
        )
    return value


def label_value(value: str) -> str:
    """A label value: any printable text on one line."""
    if any(ch in value for ch in "\n\r") or not value.isprintable():
        raise ValueProblem(f"label value {shown(value)} must be printable text on one line")
    return definition_text(value, "label value")


def requirement(value: str) -> str:
    """A PEP 508 requirement specifier."""
    try:
        req = Requirement(value)
    except InvalidRequirement as exc:
        # packaging's message is several lines (the text and a caret); a problem is one line
        reason = str(exc).splitlines()[0][:200] if str(exc) else "parse error"
        raise ValueProblem(
            f"{shown(value)} is not a valid requirement: {reason}",
            "for example numpy==2.1.3 or uproot>=5",
        ) from None
    if "\n" in value or value.strip().startswith("-"):
        raise ValueProblem(
            f"{shown(value)} is not a requirement specifier",
            "pip options belong in component options, not requirements",
        )
    return definition_text(str(req), "requirement")


def project_name(value: str) -> str:
    """A Python project name as pip's ``--no-binary`` takes it (PEP 508 name)."""
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", value):
        raise ValueProblem(
            _describe_bad(value, r"[A-Za-z0-9._-]"), "a Python project name, e.g. h5py"
        )
    return value


def url(value: str, what: str = "URL") -> str:
    """An http(s) URL without spaces, quotes or shell characters."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueProblem(f"{what} must be an http:// or https:// URL, got {shown(value)}")
    if (
        not re.fullmatch(r"[A-Za-z0-9._~:/?#@!$&+,;=%-]+", value)
        or "$" in value
        or ";" in value
        or "&" in value
    ):
        raise ValueProblem(
            _describe_bad(value, r"[A-Za-z0-9._~:/?#@+,=%-]"), "percent-encode unusual characters"
        )
    return value


# The OCI distribution reference grammar (distribution/reference): a name is an optional
# domain and one or more lower-case path components; a component is alphanumeric runs joined by
# `.`, `_`, `__` or dashes, so it neither starts nor ends with one. The first component is a
# domain only when it has a `.` or `:` or is `localhost` (Docker Hub otherwise), which makes
# `MyOrg/name` an invalid name, not a registry called MyOrg.
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_TEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: Longest repository name (domain and path), as the distribution spec has it.
MAX_NAME_CHARS = 255
#: Longest tag.
MAX_TAG_CHARS = 128


def _name_problem(name: str) -> str | None:
    """Why ``name`` (``[domain/]path``, no tag) is not a repository name, or None."""
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long; a repository name may have {MAX_NAME_CHARS}"
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            return f"has an invalid registry host {shown(first)}"
        parts = parts[1:]
    for part in parts:
        if not _PATH_PART.fullmatch(part):
            return (
                f"has an invalid path component {shown(part)}: lower-case letters and digits,"
                " joined by single . or _, __ or dashes (not at the start or end)"
            )
    return None


#: Local repository prefix of the images this tool builds (``hepml/<spec name>``).
LOCAL_PREFIX = "hepml"


def local_name_problem(name: str) -> str | None:
    """Why a spec name cannot be the local repository ``hepml/<name>``, or None."""
    why = _name_problem(f"{LOCAL_PREFIX}/{name}")
    if why is None:
        return None
    if len(name) > MAX_NAME_CHARS - len(LOCAL_PREFIX) - 1:
        return (
            f"spec name is {len(name)} characters long; as the repository"
            f" {LOCAL_PREFIX}/<name> it may have {MAX_NAME_CHARS - len(LOCAL_PREFIX) - 1}"
        )
    return f"spec name {shown(name)} is not a valid repository name: no dash at the start or end"


def image_ref(value: str) -> str:
    """An image reference ``[registry/]repository[:tag]`` (a digest goes in ``digest``)."""
    if "@" in value:
        raise ValueProblem(
            f"{shown(value)} contains a digest", "write the digest under `digest:` instead"
        )
    name, tag_text = value, None
    last = value.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag_text = value.rsplit(":", 1)
    why = _name_problem(name)
    if why is None and tag_text is not None and not _TAG_TEXT.fullmatch(tag_text):
        why = f"has an invalid tag {shown(tag_text)} (letters, digits, _ . -, at most 128)"
    if why is not None:
        raise ValueProblem(
            f"{shown(value)} is not a valid image reference: it {why}",
            "for example almalinux:9.4 or registry.example.org/group/name:tag",
        )
    return value


def image_digest(value: str) -> str:
    """A content digest ``sha256:<64 hex>``."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise ValueProblem(
            f"{shown(value)} is not a sha256 digest",
            "write sha256: followed by 64 lower-case hex digits",
        )
    return value


def tag(value: str) -> str:
    """A Docker tag after expansion."""
    if not _TAG_TEXT.fullmatch(value):
        too_long = len(value) > MAX_TAG_CHARS
        raise ValueProblem(
            f"tag {shown(value)} is not valid"
            + (f": it is {len(value)} characters long" if too_long else ""),
            f"tags use letters, digits, _ . - and at most {MAX_TAG_CHARS} characters",
        )
    return value


def repository(value: str) -> str:
    """A registry repository ``host[:port]/path`` without tag."""
    if ":" in value.rsplit("/", 1)[-1] or "@" in value:
        raise ValueProblem(
            f"{shown(value)} is not a repository name",
            "for example ghcr.io/org/name, without a tag",
        )
    why = _name_problem(value)
    if why is not None:
        raise ValueProblem(
            f"{shown(value)} is not a repository name: it {why}",
            "for example ghcr.io/org/name, without a tag",
        )
    return value


#: The most a spec's file mode may be: permission bits, no setuid, setgid or sticky bit.
MAX_FILE_MODE = 0o777


def file_mode(value: str) -> str:
    """Octal permission bits (at most 0777: no setuid, setgid or sticky bit)."""
    if not re.fullmatch(r"0{0,2}[0-7]{3}|0*[1-7][0-7]{3}", value):
        raise ValueProblem(f"file mode must be octal like 0644 or 0755, got {shown(value)}")
    if int(value, 8) > MAX_FILE_MODE:
        raise ValueProblem(
            f"file mode {shown(value)} sets the setuid, setgid or sticky bit",
            "use permission bits only, at most 0777 (e.g. 0644 or 0755)",
        )
    return f"{int(value, 8):04o}"


def smoke_command(value: str) -> str:
    """A smoke command is shell by design; it runs inside the container. It must not be empty."""
    if not value.strip():
        raise ValueProblem("a smoke command must not be empty")
    if "\x00" in value:
        raise ValueProblem("a smoke command must not contain NUL bytes")
    odd = _OTHER_LINE_BREAKS.search(value)
    if odd:
        raise ValueProblem(
            f"a smoke command must not contain the line break {odd.group()!r}",
            "separate lines with a plain newline",
        )
    return definition_text(value, "smoke command")


def one_line(value: str, what: str) -> str:
    """Printable text on one line (a description, an exec-form argument)."""
    if not value.isprintable():
        raise ValueProblem(f"{what} {shown(value)} must be printable text on one line")
    return definition_text(value, what)


def choice(value: str, what: str, allowed: tuple[str, ...]) -> str:
    """One of a fixed set of words (checked again after matrix substitution)."""
    if value not in allowed:
        raise ValueProblem(f"{what} must be one of {', '.join(allowed)}; got {shown(value)}")
    return value


def suite(value: str) -> str:
    """A Debian suite or codename."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", value):
        raise ValueProblem(f"{shown(value)} is not a valid suite name", "for example bookworm")
    return value


def word(value: str, what: str) -> str:
    """A simple lower-case word such as a variant slug piece."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueProblem(
            _describe_bad(value, r"[A-Za-z0-9_.-]"), f"{what} may contain letters, digits and _ . -"
        )
    return value
