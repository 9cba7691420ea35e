"""Hostile specs: what a spec from someone else must not be able to do to the machine reading it.

Every case writes a spec into ``tmp_path`` and calls the library (load → resolve → render); the
answer must be a ``SpecError`` naming file, line and key, quickly, or a valid render.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from hepml_images.errors import SpecError
from hepml_images.pipeline import render_variants, resolve_specs
from hepml_images.spec import files

HEAD = """\
name: hostile
base:
  image: debian:12
  family: debian
  release: bookworm
"""


def write(directory: Path, text: str, name: str = "hostile") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, *selection: str) -> list[tuple[int | None, str, str]]:
    """(line, key, message) of every problem; fails when the spec is accepted."""
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(path)], selection)
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def has(found: list[tuple[int | None, str, str]], key: str, *parts: str) -> bool:
    return any(k == key and all(part in m for part in parts) for _, k, m in found)


def render_all(path: Path) -> None:
    resolution = resolve_specs([str(path)])
    render_variants(resolution.variants)


# --- 1. files from outside the spec directory --------------------------------------------------

FILES = HEAD + "files:\n  - src: {src}\n    dest: /p\n"
LOCK = HEAD + (
    'components:\n  python:\n    version: "3.11"\n'
    "  pip:\n    file: {src}\n    require-hashes: true\n"
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret outside the spec directory, and the spec directory beside it."""
    secret = tmp_path / "secret"
    secret.write_text("root:hash-of-the-host\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    return specs


@pytest.mark.parametrize("template", [FILES, LOCK], ids=["files", "pip-file"])
def test_symlink_out_of_the_spec_directory_is_refused(outside: Path, template: str) -> None:
    (outside / "p").symlink_to(outside.parent / "secret")
    spec = write(outside, template.format(src="p"))
    key = "files[0].src" if template is FILES else "components.pip.file"
    assert has(problems(spec), key, "outside the spec's directory")


def test_symlinked_folder_out_of_the_spec_directory_is_refused(outside: Path) -> None:
    (outside / "sub").symlink_to(outside.parent)
    spec = write(outside, FILES.format(src="sub/secret"))
    assert has(problems(spec), "files[0].src", "outside the spec's directory")


def test_absolute_symlink_to_a_host_file_is_refused(outside: Path) -> None:
    (outside / "p").symlink_to("/etc/passwd")
    spec = write(outside, FILES.format(src="p"))
    found = problems(spec)
    assert has(found, "files[0].src", "outside the spec's directory")
    assert not any("root:" in m for _, _, m in found)


def test_symlink_inside_the_spec_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("hello\n")
    (tmp_path / "p").symlink_to("real.txt")
    spec = write(tmp_path, FILES.format(src="p"))
    resolution = resolve_specs([str(spec)])
    (copied,) = resolution.selected[0].content.files
    assert copied.content == b"hello\n"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    spec = write(tmp_path, FILES.format(src="p"))
    started = time.monotonic()
    assert has(problems(spec), "files[0].src", "named pipe", "not a regular file")
    assert time.monotonic() - started < 5


def test_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").symlink_to("/dev/zero")
    spec = write(tmp_path, FILES.format(src="p"))
    assert has(problems(spec), "files[0].src", "outside the spec's directory")
    with pytest.raises(files.FileProblem, match="a device"):
        files.read_regular(Path("/dev/zero"), limit=10, what="zero")


def test_socket_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "s"  # AF_UNIX paths are short
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.bind(str(short))
        except OSError:
            pytest.skip("cannot bind a unix socket here")
        spec = write(tmp_path, FILES.format(src="s"))
        assert has(problems(spec), "files[0].src", "a socket")


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    spec = write(tmp_path, FILES.format(src="d"))
    assert has(problems(spec), "files[0].src", "a directory")


def test_spec_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    started = time.monotonic()
    found = problems(tmp_path / "fifo.yaml")
    assert any("named pipe" in m for _, _, m in found)
    assert time.monotonic() - started < 5


def test_oversized_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as out:  # sparse: large on paper, nothing written
        out.truncate(files.MAX_FILE_BYTES + 1)
    spec = write(tmp_path, FILES.format(src="big.bin"))

    real_read = os.read

    def checked_read(fd: int, size: int) -> bytes:
        assert os.fstat(fd).st_size <= files.MAX_FILE_BYTES, "read despite the size"
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", checked_read)
    assert has(problems(spec), "files[0].src", "the limit is 64 MiB")


def test_oversized_lock_file_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    with lock.open("wb") as out:
        out.truncate(files.MAX_LOCK_BYTES + 1)
    spec = write(tmp_path, LOCK.format(src="lock.txt"))
    assert has(problems(spec), "components.pip.file", "the limit is 4 MiB")


def test_read_stops_at_the_limit_when_the_size_lies() -> None:
    # /proc files report size 0 and still have content: the read itself is bounded
    if not os.path.exists("/proc/self/status"):  # noqa: PTH110
        pytest.skip("no /proc")
    with pytest.raises(files.FileProblem, match="larger than the limit"):
        files.read_regular(Path("/proc/self/status"), limit=8, what="x")
