"""Reading the files a spec names, safely. The only code that opens spec-related files.

Input: a path (a spec file) or a spec's directory and a relative path from the spec
(``files[].src``, ``components.pip.file``). Output: the file's bytes, or ``FileProblem`` with a
message for the user.

A spec is input that may come from someone else, so what it names is checked before a byte is
read: the path is resolved (every symbolic link, in every component) and must stay inside the
spec's directory; only regular files are read (a FIFO would block, ``/dev/zero`` never ends, a
directory or socket is no file); the size is checked against a limit before reading, and the
read itself stops at the limit should the file grow meanwhile.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: Largest file copied into an image through ``files:`` (64 MiB): the build context is held in
#: memory and hashed; anything larger belongs in a package or a download step.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Largest requirements (lock) file read through ``components.pip.file`` (4 MiB): a lock file
#: of a large environment with every hash is a few hundred KiB.
MAX_LOCK_BYTES = 4 * 1024 * 1024


class FileProblem(Exception):  # noqa: N818 - a problem with a named file, reported, not a crash
    """A file that cannot or must not be read; ``message`` is for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _size(limit: int) -> str:
    mib, rest = divmod(limit, 1024 * 1024)
    return f"{mib} MiB" if mib and not rest else f"{limit} bytes"


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"  # pragma: no cover - door files and the like


def read_regular(path: Path, *, limit: int, what: str, follow: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    ``follow=False`` refuses a symbolic link as the last component (for a path that has been
    resolved already, so that a link swapped in afterwards is not followed).
    """
    try:
        info = path.stat() if follow else path.lstat()
    except FileNotFoundError:
        raise FileProblem(f"{what}: no such file") from None
    except OSError as exc:
        raise FileProblem(f"cannot read {what}: {exc.strerror}") from None
    kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else _kind(info.st_mode)
    if kind is not None:
        raise FileProblem(
            f"{what} is {kind}, not a regular file",
            "list regular files one by one" if kind == "a directory" else None,
        )
    if info.st_size > limit:
        raise FileProblem(f"{what} is {info.st_size} bytes; the limit is {_size(limit)}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileProblem(f"cannot read {what}: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        kind = _kind(opened.st_mode)
        if kind is not None:  # replaced between the check and the open
            raise FileProblem(f"{what} is {kind}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise FileProblem(f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise FileProblem(f"{what} is larger than the limit of {_size(limit)}")
    return b"".join(chunks)


def read_inside(directory: Path, relative: str, *, limit: int) -> bytes:
    """The bytes of ``relative`` below ``directory``; the resolved path must stay inside it."""
    what = repr(relative)
    root = Path(os.path.realpath(directory))
    target = Path(os.path.realpath(root / relative))
    if target == root or not target.is_relative_to(root):
        raise FileProblem(
            f"{what} resolves (through a symbolic link) to a path outside the spec's directory",
            "copy the file next to the spec or into a folder below it; links may only point"
            " inside the spec's directory",
        )
    return read_regular(target, limit=limit, what=what, follow=False)
