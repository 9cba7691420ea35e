"""Writing generated files to disk, safely: the one place that does.

In: a directory (or one file path) that the user named, and files as relative names, bytes and
modes. Out: the files, each written whole, or a ``UsageError`` (exit 2) that names the path.

What "safely" means here, since the output directory may already hold anything:

- An entry that is already there is never followed: every file is written to a fresh temporary
  name in its own directory (``O_CREAT | O_EXCL | O_NOFOLLOW``) and renamed over the old name,
  which replaces a symbolic link instead of writing where it points. Every folder below the
  output directory is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent
  (``dir_fd``), so a symlinked folder inside the output is refused, not entered.
- The path the user gave is taken as given (it may be, or pass through, a symlink on purpose).
- Names are relative, without ``..``, ``.``, empty parts or NUL; anything else is refused.
- Modes are permission bits only (``0o777``): no setuid, setgid or sticky bit is ever set, even
  when rendering as root; the mode is set explicitly, independent of the umask.
- ``OSError`` (permission denied, not a directory, no space …) becomes a ``UsageError`` that
  says which path and why, never an internal error.

Not pure (it writes files), and the only module besides the engine and the CLI that does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hepml_images.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from hepml_images.render import Rendered

#: The permission bits a written file may have: no setuid, setgid or sticky bit.
PERMISSION_BITS = 0o777
#: The build files of one variant, by format.
FILENAMES = {"docker": "Dockerfile", "singularity": "Singularity.def"}
#: Which build files to write.
Format = Literal["docker", "singularity", "all"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, kw_only=True)
class OutputFile:
    """One file to write: ``name`` relative to the output directory (``/``-separated)."""

    name: str
    content: bytes
    mode: int = 0o644


def safe_mode(mode: int) -> int:
    """``mode`` reduced to permission bits (``0o777``): setuid, setgid and sticky dropped."""
    return mode & PERMISSION_BITS


def name_parts(name: str) -> tuple[str, ...]:
    """The parts of a relative output name; ``UsageError`` for anything that could leave it."""
    if not name or "\x00" in name or name.startswith("/") or "\\" in name:
        raise UsageError(f"refusing to write {name!r}: not a plain relative file name")
    parts = tuple(name.split("/"))
    if any(part in {"", ".", ".."} for part in parts):
        raise UsageError(f"refusing to write {name!r}: empty, '.' or '..' path parts")
    return parts


def output_path(raw: str | os.PathLike[str], what: str = "--output") -> Path:
    """A user-given output path as a ``Path``; empty text or NUL is a ``UsageError``.

    Call it on the option's text: ``Path("")`` is ``.``, so an empty ``-o ''`` cannot be told
    from ``-o .`` once it is a ``Path``.
    """
    text = os.fspath(raw)
    if not text.strip():
        raise UsageError(f"{what} must not be empty", hint="give a directory or file name")
    if "\x00" in text:
        raise UsageError(f"{what} must not contain NUL characters")
    return Path(text)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return "a part of it is not a directory"
    if exc.errno == errno.EISDIR:
        return "it is a directory"
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def _as_usage_error(path: Path | str, action: str) -> Iterator[None]:
    try:
        yield
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot {action} {path}: {_reason(exc)}") from None


def _open_root(directory: Path) -> int:
    """A descriptor of ``directory``, created (with its parents) if missing."""
    with _as_usage_error(directory, "create the output directory"):
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
    with _as_usage_error(directory, "open the output directory"):
        # the directory the user named may be a symlink on purpose: follow it, once, here
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))


def _open_subdir(parent_fd: int, name: str, shown: Path) -> int:
    """Open (creating if missing) folder ``name`` below ``parent_fd``; never through a link."""
    with _as_usage_error(shown, "create the folder"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            # Linux answers ENOTDIR for a symlink opened with O_DIRECTORY | O_NOFOLLOW: say which
            if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from exc
            raise


def _write_at(dir_fd: int, name: str, content: bytes, mode: int, shown: Path) -> None:
    """Write ``name`` in ``dir_fd`` via a fresh temporary file renamed over it."""
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    with _as_usage_error(shown, "write"):
        fd = os.open(temporary, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb", closefd=True) as stream:
                stream.write(content)
                stream.flush()
                os.fchmod(stream.fileno(), safe_mode(mode))
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise


def write_files(directory: Path, files: Iterable[OutputFile]) -> list[Path]:
    """Write ``files`` below ``directory`` (created if missing); return the paths, in order.

    Existing files are replaced, existing symbolic links are replaced (not followed), a symlink
    or a non-directory where a folder must be is a ``UsageError``, as is any ``OSError``.
    """
    items = list(files)
    checked = [(item, name_parts(item.name)) for item in items]
    written: list[Path] = []
    root = _open_root(directory)
    try:
        for item, parts in checked:
            fds: list[int] = []
            try:
                current = root
                shown = directory
                for part in parts[:-1]:
                    shown /= part
                    current = _open_subdir(current, part, shown)
                    fds.append(current)
                path = shown / parts[-1]
                _write_at(current, parts[-1], item.content, item.mode, path)
                written.append(path)
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(root)
    return written


def write_file(path: Path, content: bytes, *, mode: int = 0o644) -> Path:
    """Write one file (``ci generate -o``, ``ducc-wishlist -o``); its folder is created.

    A symbolic link at ``path`` is replaced by the file, not followed; a directory there, an
    empty path or an ``OSError`` is a ``UsageError``.
    """
    text = os.fspath(path)
    if not text.strip() or text.endswith("/"):
        raise UsageError(f"{text!r} is not a file name", hint="give -o a file name")
    if path.name in {"", ".", ".."}:
        raise UsageError(f"{path} is not a file name", hint="give -o a file name")
    if path.is_dir() and not path.is_symlink():
        raise UsageError(f"{path} is a directory", hint="give -o a file name")
    return write_files(path.parent, [OutputFile(name=path.name, content=content, mode=mode)])[0]


def build_files(rendered: Rendered, fmt: Format, *, subdir: str | None = None) -> list[OutputFile]:
    """One variant's build files (in ``subdir`` if given) and build context, to write."""
    prefix = "" if subdir is None else f"{subdir}/"
    if subdir is not None and "/" in subdir:
        raise UsageError(f"refusing to write into {subdir!r}: not one folder name")
    texts = {"docker": rendered.dockerfile, "singularity": rendered.singularity}
    out = [
        OutputFile(name=prefix + FILENAMES[kind], content=text.encode("utf-8"), mode=0o644)
        for kind, text in texts.items()
        if fmt in {kind, "all"}
    ]
    out.extend(
        OutputFile(name=prefix + item.name, content=item.content, mode=item.mode)
        for item in rendered.context
    )
    return out


def write_build_dir(
    rendered: Rendered,
    directory: Path,
    fmt: Format,
    *,
    subdir: str | None = None,
) -> list[Path]:
    """Write one variant's build files and context into ``directory`` (or its ``subdir``).

    The replacement of ``pipeline.write_build_dir``: the same files, written by ``write_files``.
    ``subdir`` (a variant's slug when several are written) must be one folder name: it is
    checked like every other name, so a slug such as ``..`` cannot leave ``directory``.
    """
    return write_files(directory, build_files(rendered, fmt, subdir=subdir))
