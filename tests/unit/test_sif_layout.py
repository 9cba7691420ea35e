"""The Apptainer layout: its scripts run under /bin/sh and mean what Apptainer's conversion does."""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING

import pytest

from hepml_images.sif import layout

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

EPOCH = 1_700_000_000


def _install(tmp_path: Path, config: Mapping[str, object]) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    layout.install(root, layout.entries(config), epoch=EPOCH)
    return root


def _sh(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        check=True,
    )
    return done.stdout


def _runscript(root: Path) -> Path:
    # the runscript execs its command: run it with `echo` as the program to see the argv
    return root / ".singularity.d" / "runscript"


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "args", "expected"),
    [
        (["echo", "ep"], ["a b", "c"], [], "ep a b c"),
        (["echo", "ep"], ["a b", "c"], ["x"], "ep x"),
        ([], ["echo", "default"], [], "default"),
        ([], ["echo", "default"], ["echo", "given"], "given"),
        (["echo", "only"], [], ["x", "y"], "only x y"),
        (["echo", "$HOME `id` 'q'"], [], [], "$HOME `id` 'q'"),
    ],
)
def test_runscript_runs_entrypoint_then_arguments_or_cmd(
    tmp_path: Path, entrypoint: list[str], cmd: list[str], args: list[str], expected: str
) -> None:
    root = _install(tmp_path, {"Entrypoint": entrypoint, "Cmd": cmd})
    assert _sh(f". {_runscript(root)}", *args).strip() == expected


def test_runscript_without_entrypoint_or_cmd_runs_the_arguments_or_a_shell(
    tmp_path: Path,
) -> None:
    root = _install(tmp_path, {})
    assert _sh(f". {_runscript(root)}", "echo", "given").strip() == "given"
    done = subprocess.run(
        ["/bin/sh", str(_runscript(root))],
        input="echo from-shell\n",
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "from-shell"


def test_environment_keeps_host_values_except_path_and_stays_literal(tmp_path: Path) -> None:
    tricky = "a \"b\" $HOME `id` $(id) 'c'"
    config = {
        "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin", "FOO=image", f"TRICKY={tricky}", "1BAD=x"]
    }
    root = _install(tmp_path, config)
    script = root / ".singularity.d" / "env" / "10-docker2singularity.sh"
    show = f'. {script}; printf "%s|%s|%s\\n" "$PATH" "$FOO" "$TRICKY"'
    assert _sh(show).strip() == f"/opt/venv/bin:/usr/bin:/bin|image|{tricky}"
    host = {"PATH": "/usr/bin:/bin", "FOO": "host"}
    assert _sh(show, env=host).strip() == f"/opt/venv/bin:/usr/bin:/bin|host|{tricky}"
    assert "1BAD" not in script.read_text()


def test_base_environment_puts_the_nv_library_directory_last(tmp_path: Path) -> None:
    root = _install(tmp_path, {})
    script = root / ".singularity.d" / "env" / "99-base.sh"
    assert _sh(f'. {script}; echo "$LD_LIBRARY_PATH"').strip() == "/.singularity.d/libs"
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/lib"}
    assert _sh(f'. {script}; echo "$LD_LIBRARY_PATH"', env=env).strip() == (
        "/opt/lib:/.singularity.d/libs"
    )


def test_layout_has_apptainers_files_links_and_grid_mount_points(tmp_path: Path) -> None:
    labels = {"io.hepml.spec": "debian-base", "org.opencontainers.image.version": "1.0"}
    root = _install(tmp_path, {"Labels": labels})
    sd = root / ".singularity.d"
    for name in layout.ACTIONS:
        assert os.access(sd / "actions" / name, os.X_OK), name
    for name in (*layout.ENV_SCRIPTS, "10-docker2singularity.sh"):
        assert (sd / "env" / name).is_file(), name
    assert (sd / "libs").is_dir()
    assert os.access(sd / "runscript", os.X_OK)
    assert json.loads((sd / "labels.json").read_text()) == labels
    for link, target in layout.LINKS:
        assert (root / link).readlink().as_posix() == target
        assert (root / link).exists(), f"/{link} dangles"
    for directory in ("srv", "cvmfs", "proc", "sys", "dev", "tmp", "var/tmp", "home"):
        assert (root / directory).is_dir(), directory
    for name in layout.BIND_TARGETS:
        assert (root / name).is_file()
    for path in [root / e.path for e in layout.entries({})]:
        assert path.lstat().st_mtime_ns == EPOCH * 10**9, path


def test_install_keeps_image_files_and_directory_times(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 image\n")
    (root / "srv").mkdir()
    (root / "environment").write_text("an image file\n")
    os.utime(root / "etc", ns=(5 * 10**9, 5 * 10**9))
    os.utime(root / "srv", ns=(6 * 10**9, 6 * 10**9))
    layout.install(root, layout.entries({}), epoch=EPOCH)
    assert (root / "etc" / "hosts").read_text() == "127.0.0.1 image\n"
    assert (root / "etc" / "resolv.conf").read_text() == ""
    assert (root / "environment").read_text() == "an image file\n"
    assert (root / "etc").stat().st_mtime_ns == 5 * 10**9  # restored after resolv.conf
    assert (root / "srv").stat().st_mtime_ns == 6 * 10**9


def test_install_refuses_to_write_through_a_link_out_of_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / ".singularity.d").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the image"):
        layout.install(root, layout.entries({}), epoch=EPOCH)
    assert list(outside.iterdir()) == []


def test_layout_is_the_same_for_the_same_config() -> None:
    config = {"Env": ["A=1"], "Cmd": ["/bin/bash"], "Labels": {"b": "2", "a": "1"}}
    assert layout.entries(config) == layout.entries(dict(reversed(list(config.items()))))
