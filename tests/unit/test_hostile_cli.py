"""Hostile input through the command line, end to end: exit 2 with a message, nothing written
outside what the user named, nothing followed that was there before.

The library-level cases are in test_outputs.py, test_hostile_specs.py, test_ci_hostile.py and
test_deffile_injection.py; these check that the commands use those paths.
"""

from __future__ import annotations

import textwrap
import time
from typing import TYPE_CHECKING

import yaml

from hepml_images.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

SPEC = """\
name: my-env
version: "1.0.0"
base: {image: "debian:12", family: debian}
"""


def _spec(tmp_path: Path, text: str = SPEC, name: str = "my-env.yaml") -> Path:
    directory = tmp_path / "specs"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_render_does_not_write_through_a_symlink_in_the_output(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Dockerfile").symlink_to(outside)
    assert main(["render", str(_spec(tmp_path)), "-o", str(out)]) == 0
    assert outside.read_text() == "keep me"
    assert not (out / "Dockerfile").is_symlink()
    assert "FROM debian:12" in (out / "Dockerfile").read_text()


def test_render_to_an_empty_output_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["render", str(_spec(tmp_path)), "-o", ""]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "Dockerfile").exists()


def test_render_below_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["render", str(_spec(tmp_path)), "-o", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert str(blocker) in err


def test_a_spec_file_linked_out_of_its_directory_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    spec = _spec(tmp_path, SPEC + "files:\n  - {src: p, dest: /p}\n")
    (spec.parent / "p").symlink_to(secret)
    out = tmp_path / "out"
    assert main(["render", str(spec), "-o", str(out)]) == 2
    assert "files" in capsys.readouterr().err
    assert not any("host secret" in p.read_text() for p in out.rglob("*") if p.is_file())


def test_a_huge_matrix_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    axes = {f"a{i}": [f"v{j}" for j in range(20)] for i in range(6)}
    spec = _spec(tmp_path, SPEC + yaml.safe_dump({"matrix": axes}))
    started = time.monotonic()
    assert main(["validate", str(spec)]) == 2
    assert time.monotonic() - started < 30
    assert "matrix" in capsys.readouterr().err


def test_a_setuid_mode_is_a_spec_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, SPEC + 'files:\n  - {src: f, dest: /f, mode: "06777"}\n')
    (spec.parent / "f").write_text("x")
    out = tmp_path / "out"
    assert main(["render", str(spec), "-o", str(out)]) == 2
    assert not any(p.stat().st_mode & 0o7000 for p in out.rglob("*") if p.exists())


def test_ci_generate_keeps_a_newline_in_a_path_out_of_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, name="x.yaml")
    hostile = tmp_path / "evil\ninjected:\n  script: [id]"
    hostile.mkdir()
    moved = hostile / "my-env.yaml"
    spec.replace(moved)
    code = main(["ci", "generate", "--provider", "gitlab", str(moved)])
    out = capsys.readouterr().out
    if code == 0:
        assert "injected" not in yaml.safe_load(out)
    else:
        assert code == 2


def test_ci_generate_refuses_a_github_expression_in_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "${{ secrets.GITHUB_TOKEN }}"
    directory.mkdir()
    spec = directory / "my-env.yaml"
    spec.write_text(SPEC)
    assert main(["ci", "generate", "--provider", "github", str(spec)]) == 2
    assert "${{" in capsys.readouterr().err


def test_an_os_error_on_a_named_path_is_exit_2_not_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hepml_images import pipeline

    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied", "/srv/specs/x.yaml")

    monkeypatch.setattr(pipeline, "resolve_specs", refuse)
    assert main(["validate", "x"]) == 2
    err = capsys.readouterr().err
    assert "/srv/specs/x.yaml: Permission denied" in err
    assert "internal error" not in err
