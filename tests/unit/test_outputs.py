"""Generated files land inside the output directory, with the modes meant, or a usage error."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest

from hepml_images import outputs
from hepml_images.cli import main
from hepml_images.errors import UsageError
from hepml_images.ir import ContextFile
from hepml_images.outputs import OutputFile, write_file, write_files
from hepml_images.render import Rendered
from hepml_images.spec import values

if TYPE_CHECKING:
    from pathlib import Path


def _file(name: str, content: bytes = b"new\n", mode: int = 0o644) -> OutputFile:
    return OutputFile(name=name, content=content, mode=mode)


def test_writes_files_and_folders_with_their_modes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = write_files(out, [_file("a.txt"), _file("sub/dir/run.sh", b"#!/bin/sh\n", 0o755)])
    assert written == [out / "a.txt", out / "sub" / "dir" / "run.sh"]
    assert (out / "a.txt").read_bytes() == b"new\n"
    assert stat.S_IMODE((out / "sub/dir/run.sh").stat().st_mode) == 0o755
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_an_existing_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Dockerfile").symlink_to(victim)
    write_files(out, [_file("Dockerfile")])
    assert victim.read_bytes() == b"precious\n"
    assert not (out / "Dockerfile").is_symlink()
    assert (out / "Dockerfile").read_bytes() == b"new\n"


def test_a_dangling_symlink_does_not_create_its_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "Singularity.def").symlink_to(tmp_path / "created-elsewhere")
    write_files(out, [_file("Singularity.def")])
    assert not (tmp_path / "created-elsewhere").exists()


def test_a_symlinked_folder_inside_the_output_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "requirements").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UsageError, match="symbolic link") as caught:
        write_files(out, [_file("requirements/base.txt")])
    assert "requirements" in caught.value.message
    assert list(elsewhere.iterdir()) == []


def test_the_output_directory_itself_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    write_files(tmp_path / "link", [_file("Dockerfile")])
    assert (real / "Dockerfile").read_bytes() == b"new\n"


@pytest.mark.parametrize(
    ("mode", "expected"), [(0o6777, 0o777), (0o4755, 0o755), (0o1777, 0o777), (0o640, 0o640)]
)
def test_modes_are_masked_to_permission_bits(tmp_path: Path, mode: int, expected: int) -> None:
    write_files(tmp_path, [_file("x", mode=mode)])
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == expected


def test_the_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_files(tmp_path, [_file("x", mode=0o755)])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./x", "a/.", "a\x00b", "a\\b", ".."]
)
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="refusing to write"):
        write_files(out, [_file(name)])
    assert not out.exists(), "nothing is written (not even the folder) when a name is bad"


def test_a_file_where_the_output_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="not a directory"):
        write_files(tmp_path / "out", [_file("Dockerfile")])


def test_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "sub").write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match=r"sub"):
        write_files(tmp_path, [_file("sub/x")])


def test_a_directory_where_a_file_should_be(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").mkdir()
    with pytest.raises(UsageError, match="Dockerfile"):
        write_files(tmp_path, [_file("Dockerfile")])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied_is_a_usage_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(UsageError, match="locked") as caught:
            write_files(locked / "out", [_file("Dockerfile")])
        assert caught.value.exit_code == 2
        with pytest.raises(UsageError, match="locked"):
            write_file(locked / "pipeline.yml", b"x")
    finally:
        locked.chmod(0o700)


def test_os_errors_are_usage_errors_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def denied(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(UsageError) as caught:
        write_files(tmp_path, [_file("Dockerfile")])
    assert caught.value.exit_code == 2
    assert caught.value.message == f"cannot write {tmp_path / 'Dockerfile'}: Permission denied"


@pytest.mark.parametrize("raw", ["", " ", "a\x00b"])
def test_empty_or_nul_output_paths_are_usage_errors(raw: str) -> None:
    with pytest.raises(UsageError, match="--output"):
        outputs.output_path(raw)


def test_output_path_keeps_ordinary_paths() -> None:
    assert str(outputs.output_path("build/x")) == "build/x"


def test_write_file_replaces_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "pipeline.yml").symlink_to(victim)
    assert write_file(tmp_path / "pipeline.yml", b"jobs\n") == tmp_path / "pipeline.yml"
    assert victim.read_bytes() == b"precious\n"
    assert (tmp_path / "pipeline.yml").read_bytes() == b"jobs\n"


def test_write_file_creates_its_folder(tmp_path: Path) -> None:
    write_file(tmp_path / "a" / "b" / "w.yaml", b"x")
    assert (tmp_path / "a" / "b" / "w.yaml").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["", ".", "..", "dir/"])
def test_write_file_needs_a_file_name(tmp_path: Path, name: str) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError):
        write_file(tmp_path / name if name else type(tmp_path)(name), b"x")


def test_write_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        write_file(tmp_path, b"x")


def _rendered() -> Rendered:
    return Rendered(
        dockerfile="FROM x\n",
        singularity="Bootstrap: docker\n",
        context=(
            ContextFile(name="entrypoint.sh", content=b"#!/bin/sh\n", mode=0o6755),
            ContextFile(name="requirements/base.txt", content=b"numpy\n"),
        ),
    )


def test_write_build_dir_writes_what_the_format_asks(tmp_path: Path) -> None:
    written = outputs.write_build_dir(_rendered(), tmp_path, "docker")
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "Dockerfile",
        "entrypoint.sh",
        "requirements/base.txt",
    ]
    assert stat.S_IMODE((tmp_path / "entrypoint.sh").stat().st_mode) == 0o755


def test_write_build_dir_subfolder(tmp_path: Path) -> None:
    written = outputs.write_build_dir(_rendered(), tmp_path, "all", subdir="cpu")
    assert {p.relative_to(tmp_path).as_posix() for p in written} >= {
        "cpu/Dockerfile",
        "cpu/Singularity.def",
    }


@pytest.mark.parametrize("slug", ["..", ".", "", "a/b", "/abs"])
def test_write_build_dir_subfolder_must_be_one_name(tmp_path: Path, slug: str) -> None:
    with pytest.raises(UsageError):
        outputs.write_build_dir(_rendered(), tmp_path / "out", "all", subdir=slug)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["06777", "4755", "1777", "2755", "07777"])
def test_spec_modes_beyond_permission_bits_are_refused(mode: str) -> None:
    with pytest.raises(values.ValueProblem, match="setuid"):
        values.file_mode(mode)


@pytest.mark.parametrize(
    ("mode", "expected"), [("644", "0644"), ("0644", "0644"), ("0755", "0755"), ("0777", "0777")]
)
def test_spec_permission_modes_are_accepted(mode: str, expected: str) -> None:
    assert values.file_mode(mode) == expected


def test_a_setuid_mode_in_a_spec_is_a_spec_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "demo.yaml"
    spec.write_text(
        "name: demo\nbase:\n  image: debian:12\n  family: debian\n"
        "files:\n  - src: data.txt\n    dest: /usr/local/bin/x\n    mode: '06777'\n",
        encoding="utf-8",
    )
    (tmp_path / "data.txt").write_text("data\n", encoding="utf-8")
    assert main(["render", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "files[0].mode" in err
    assert "setuid" in err
