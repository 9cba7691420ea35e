"""An image's flat root filesystem, from the engine's image archive (side effects: engine, files).

In: a Docker client and an image ID. Out: a directory holding exactly the image's files: the
image is saved (``docker save``) to a spool file, then its layers are applied in order with the
OCI whiteout rules (``.wh.NAME`` deletes NAME from the layers below, ``.wh..wh..opq`` empties a
directory). A container export is not used: it adds Docker's init layer (``/.dockerenv``, empty
``/etc/hosts``, fresh times) and so would neither be the tested image nor reproducible.

Layers are unpacked by GNU tar, as root with owners, modes, times, links and extended attributes
(file capabilities) kept. Without root, files become the caller's (``owned_by_root`` False) and the
squashfs step maps them back to root, as Apptainer does for unprivileged builds; device nodes
(which only root can make, and over which Apptainer binds the host's /dev) are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from hepml_images.errors import HepmlError

if TYPE_CHECKING:
    from collections.abc import Callable

    from docker import DockerClient

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20


class RootfsError(HepmlError):
    """The image could not be turned into a root filesystem."""


@dataclass(frozen=True, kw_only=True)
class Flattened:
    """What ``flatten`` made."""

    config: dict[str, Any]
    """The image configuration (``architecture``, ``config`` with Env, Cmd, Labels …)."""
    layers: int
    owned_by_root: bool
    #: device nodes left out (unprivileged: only root can create them)
    skipped_devices: int = 0


def save(
    client: DockerClient,
    image_id: str,
    target: Path,
    progress: Callable[[str, int, int], None],
) -> None:
    """Write the engine's archive of the image (``docker save``) to ``target``."""
    total = int(client.api.inspect_image(image_id).get("Size") or 0)
    done = 0
    with target.open("wb") as handle:
        for chunk in client.api.get_image(image_id, chunk_size=_CHUNK):
            handle.write(chunk)
            done += len(chunk)
            progress("export", done, max(total, done))


def _safe(name: str) -> PurePosixPath:
    path = PurePosixPath(name.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts:
        raise RootfsError(f"the image archive has an unsafe path: {name!r}")
    return path


def _keep_times(directory: Path) -> tuple[int, int] | None:
    try:
        st = directory.lstat()
    except FileNotFoundError:
        return None
    return st.st_atime_ns, st.st_mtime_ns


def _remove(path: Path) -> None:
    """Delete a path of a lower layer, keeping its directory's time (the layer's diff says it)."""
    if not (path.is_symlink() or path.exists()):
        return
    times = _keep_times(path.parent)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if times is not None:
        os.utime(path.parent, ns=times, follow_symlinks=False)


def _within(root: Path, directory: Path, checked: set[Path]) -> None:
    """A layer must not write through a link that leads out of the root filesystem."""
    if directory in checked:
        return
    real = os.path.realpath(directory)
    base = os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise RootfsError(
            f"a layer writes below /{directory.relative_to(root)}, a link that leaves the image",
            hint="rebuild the image without a layer that writes through an absolute link",
        )
    checked.add(directory)


def _prepare(root: Path, layer: IO[bytes]) -> list[str]:
    """Apply the layer's whiteouts and clear paths whose type the layer changes.

    Returns the names of the layer's device nodes (which only root can create).
    """
    checked: set[Path] = set()
    devices = []
    with tarfile.open(fileobj=layer, mode="r:") as members:
        for member in members:
            if member.ischr() or member.isblk():
                devices.append(member.name)
            rel = _safe(member.name)
            if not rel.parts:
                continue
            parent = root.joinpath(*rel.parent.parts)
            _within(root, parent, checked)
            base = rel.name
            if base == OPAQUE:
                if parent.is_dir() and not parent.is_symlink():
                    times = _keep_times(parent)
                    for child in parent.iterdir():
                        _remove(child)
                    if times is not None:
                        os.utime(parent, ns=times, follow_symlinks=False)
            elif base.startswith(WHITEOUT):
                _remove(parent / base.removeprefix(WHITEOUT))
            else:
                path = parent / base
                is_dir = path.is_dir() and not path.is_symlink()
                if member.isdir() != is_dir and (path.is_symlink() or path.exists()):
                    _remove(path)
    return devices


def _tar_argv(root: Path, *, as_root: bool, skip: Path | None = None) -> list[str]:
    argv = ["tar", "--extract", "--file=-", f"--directory={root}", "--numeric-owner"]
    argv += ["--preserve-permissions", f"--exclude={WHITEOUT}*"]
    if as_root:
        argv += ["--same-owner", "--xattrs", "--xattrs-include=*"]
    else:
        argv += ["--no-same-owner", "--delay-directory-restore"]
    if skip is not None:  # exact member names, not patterns
        argv += ["--anchored", "--no-wildcards", f"--exclude-from={skip}"]
    return argv


def _extract(root: Path, layer: IO[bytes], *, as_root: bool, skip: Path | None = None) -> None:
    with subprocess.Popen(  # noqa: S603 - fixed argv, the layer goes through stdin
        _tar_argv(root, as_root=as_root, skip=skip),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdin is not None  # noqa: S101
        assert process.stderr is not None  # noqa: S101
        with contextlib.suppress(BrokenPipeError):
            shutil.copyfileobj(layer, process.stdin, _CHUNK)
            process.stdin.close()
        stderr = process.stderr.read()
        code = process.wait()
    if code != 0:
        message = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RootfsError(
            f"tar could not unpack a layer (exit {code}): " + " / ".join(message),
            hint="check free space where the output goes; unprivileged users cannot unpack"
            " device files",
        )


def flatten(
    archive: Path,
    root: Path,
    *,
    epoch: int,
    progress: Callable[[str, int, int], None],
) -> Flattened:
    """Unpack the image in ``archive`` (a ``docker save`` file) into the empty directory ``root``.

    The root directory itself gets mode 0755 and the time ``epoch`` (layers do not say them).
    """
    as_root = os.geteuid() == 0
    with tarfile.open(archive, mode="r:") as outer:
        manifest_file = outer.extractfile("manifest.json")
        if manifest_file is None:
            raise RootfsError("the image archive has no manifest.json")
        manifest = json.load(manifest_file)
        if len(manifest) != 1:
            raise RootfsError(f"the image archive holds {len(manifest)} images, not one")
        config_file = outer.extractfile(manifest[0]["Config"])
        if config_file is None:
            raise RootfsError("the image archive has no image configuration")
        config: dict[str, Any] = json.load(config_file)
        layers: list[str] = manifest[0]["Layers"]
        sizes = [outer.getmember(name).size for name in layers]
        total, done, skipped = sum(sizes), 0, 0
        for name, size in zip(layers, sizes, strict=True):
            layer = outer.extractfile(name)
            if layer is None:
                raise RootfsError(f"the image archive lacks the layer {name}")
            devices = _prepare(root, layer)
            layer.seek(0)
            skip = None
            if devices and not as_root:  # Apptainer binds the host's /dev over them anyway
                skip = archive.with_name(f"{archive.name}.devices")
                skip.write_text("".join(f"{name}\n" for name in devices), encoding="utf-8")
                skipped += len(devices)
            _extract(root, layer, as_root=as_root, skip=skip)
            done += size
            progress("unpack", done, total)
    root.chmod(0o755)
    if as_root:
        os.chown(root, 0, 0)
    os.utime(root, ns=(epoch * 10**9, epoch * 10**9))
    return Flattened(
        config=config, layers=len(layers), owned_by_root=as_root, skipped_devices=skipped
    )
