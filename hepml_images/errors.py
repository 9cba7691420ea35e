"""The user-facing error tree.

Every failure that a user can cause or fix is a ``HepmlError`` subclass carrying a message, an
optional hint and the exit code that the CLI uses. Only the CLI catches and prints them.
"""

from __future__ import annotations

from dataclasses import dataclass


class HepmlError(Exception):
    """Base of every error meant for a user; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(HepmlError):
    """Bad command-line arguments."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a spec: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        """``file:line: [key.path] message`` and the hint on its own line.

        Each part is capped (``MAX_SHOWN``): a message that quotes what the user wrote must not
        print a whole file, whatever check produced it.
        """
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" [{_cap(self.path)}]" if self.path else ""
        text = f"{_cap(where)}:{key} {_cap(self.message)}"
        if self.hint:
            text += f"\n    hint: {_cap(self.hint)}"
        return text


#: Most characters of a problem's file, key path, message or hint that are printed.
MAX_SHOWN = 500


def _cap(text: str) -> str:
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[: MAX_SHOWN - 60]} … ({len(text) - MAX_SHOWN + 60} more characters) …"


class SpecError(HepmlError):
    """One or more problems in spec files; reported together, exit code 2."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.path, p.message))
        count = len(self.problems)
        head = "1 problem" if count == 1 else f"{count} problems"
        super().__init__(f"{head} in spec files:\n" + "\n".join(p.render() for p in self.problems))

    def __str__(self) -> str:
        return self.message


class IncompatibleVersions(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """A combination of component versions that is known not to work together."""

    exit_code = 2


class EngineUnavailable(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The Docker Engine does not answer."""

    exit_code = 1


class BuildFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """One or more images failed to build (the summary names them)."""

    exit_code = 1


class TestsFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """One or more smoke-test checks failed."""

    exit_code = 1


class NotReproduced(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """``verify``: the rebuild differs from the image (the report says where)."""

    exit_code = 1


class Interrupted(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """Ctrl-C or SIGTERM: work was cancelled and cleaned up."""

    exit_code = 130


class BuildError(HepmlError):
    """One image failed to build; ``message`` says why in one line."""


class Cancelled(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """A running step was cancelled (Ctrl-C / SIGTERM)."""

    exit_code = 130
