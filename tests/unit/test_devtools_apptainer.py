"""The real-Apptainer tool without an engine: its cache key, its command, its wrappers' mounts."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from hepml_images.devtools import apptainer as dev

if TYPE_CHECKING:
    from pathlib import Path


def test_the_image_is_named_by_its_inputs() -> None:
    assert dev.image_ref() == f"{dev.REPOSITORY}:{dev.inputs_digest()[:16]}"
    assert dev.inputs_digest() == dev.inputs_digest()


def test_mmdebstrap_makes_it_from_debian_unstable_without_a_registry(tmp_path: Path) -> None:
    argv = dev.mmdebstrap_argv(tmp_path / "r.tar", tmp_path / "e.sh")
    assert argv[0] == "mmdebstrap"
    assert argv[-3:] == ["sid", str(tmp_path / "r.tar"), "http://deb.debian.org/debian"]
    assert "--include=apptainer,fuse3,squashfuse,fuse2fs,tzdata,ca-certificates" in argv
    assert any("root default capabilities = no" in a for a in argv)


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_loader("wrapper", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)  # noqa: S102
    return module


def test_the_wrappers_mount_the_paths_their_arguments_name(tmp_path: Path) -> None:
    user, root = dev.write_wrappers("hepml-dev/apptainer:x", tmp_path / "bin")
    assert user.stat().st_mode & 0o111
    assert root.name == "apptainer-root"
    wrapper = _load(user)
    assert wrapper.IMAGE == "hepml-dev/apptainer:x"
    assert wrapper.ROOT is False
    assert _load(root).ROOT is True
    sif = tmp_path / "a.sif"
    sif.write_bytes(b"")
    out = tmp_path / "pulled"
    out.mkdir()
    exec_args = ["exec", "--cleanenv", str(sif), "/bin/sh", "-c", "true"]
    assert wrapper.binds(exec_args) == [str(sif)]  # not /bin/sh: the container's own
    pull = ["pull", "--no-https", str(out / "x.sif"), "oras://127.0.0.1:5000/r/x:1-sif"]
    assert wrapper.binds(pull) == [str(out)]
    build = ["build", str(out / "y.sif"), "docker-daemon:hepml/x:1"]
    assert wrapper.binds(build) == [str(out)]
