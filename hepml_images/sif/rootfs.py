"""An image's flat root filesystem, from the engine's image archive (side effects: engine, files).

In: an engine (``hepml_images.engine``) and an image ID. Out: a directory holding exactly the
image's files: the engine's archive of the image (``docker save``) is read as it streams, and its
layers are applied in the image's order, each as soon as it has arrived, with the OCI whiteout rules
(``.wh.NAME`` deletes NAME from the layers below, ``.wh..wh..opq`` empties a directory). A container
export is not used: it adds Docker's init layer (``/.dockerenv``, empty ``/etc/hosts``, fresh times)
and so would neither be the tested image nor reproducible.

Layers are unpacked by GNU tar, as root with owners, modes, times, links and extended attributes
(file capabilities) kept. Without root, files become the caller's (``owned_by_root`` False) and the
squashfs step maps them back to root, as Apptainer does for unprivileged builds; device nodes
(which only root can make, and over which Apptainer binds the host's /dev) are left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from hepml_images import blobs
from hepml_images.blobs import OPAQUE, WHITEOUT
from hepml_images.errors import HepmlError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from hepml_images.engine import Engine

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


def _prepare(root: Path, layer: IO[bytes]) -> tuple[list[str], dict[Path, tuple[int, int]]]:
    """Apply the layer's whiteouts and clear paths whose type the layer changes.

    Returns the names of the layer's device nodes (which only root can create), and the times
    of the directories below that the layer writes into without an entry of its own: tar's
    writing there sets their time to now, and a canonical layer leaves out a directory whose
    only change is its time, so ``_apply`` puts these times back.
    """
    checked: set[Path] = set()
    devices = []
    parents: dict[Path, tuple[int, int]] = {}
    own_dirs: set[Path] = set()
    with tarfile.open(fileobj=layer, mode="r:") as members:
        for member in members:
            if member.ischr() or member.isblk():
                devices.append(member.name)
            rel = _safe(member.name)
            if not rel.parts:
                continue
            parent = root.joinpath(*rel.parent.parts)
            _within(root, parent, checked)
            if member.isdir():
                own_dirs.add(root.joinpath(*rel.parts))
            if parent not in parents and parent.is_dir() and not parent.is_symlink():
                times = _keep_times(parent)
                if times is not None:
                    parents[parent] = times
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
    return devices, {path: times for path, times in parents.items() if path not in own_dirs}


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


def _extract(
    root: Path,
    layer: IO[bytes],
    *,
    as_root: bool,
    skip: Path | None = None,
    running: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    with subprocess.Popen(  # noqa: S603 - fixed argv, the layer goes through stdin
        _tar_argv(root, as_root=as_root, skip=skip),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        if running is not None:  # so that an interrupted caller can stop it
            running[:] = [process]
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


def _apply(
    root: Path, layer: Path, *, as_root: bool, running: list[subprocess.Popen[bytes]]
) -> int:
    """Apply one layer tar file to the tree; returns how many device nodes were left out."""
    with layer.open("rb") as handle:
        devices, untouched = _prepare(root, handle)
        handle.seek(0)
        skip = None
        if devices and not as_root:  # Apptainer binds the host's /dev over them anyway
            skip = layer.with_name(f"{layer.name}.devices")
            skip.write_text("".join(f"{name}\n" for name in devices), encoding="utf-8")
        try:
            _extract(root, handle, as_root=as_root, skip=skip, running=running)
        finally:
            if skip is not None:
                skip.unlink()
    for directory, times in untouched.items():
        if directory.is_dir() and not directory.is_symlink():
            os.utime(directory, ns=times, follow_symlinks=False)
    return len(devices) if not as_root else 0


class _Chunks(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks (the engine's archive as it comes)."""

    def __init__(self, chunks: Iterator[bytes], counted: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._left = b""
        self._counted = counted

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer of any kind
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = chunk
            self._counted(len(chunk))
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


class _Applier(threading.Thread):
    """Applies the layers in image order as their files arrive (while the archive still streams)."""

    def __init__(
        self,
        root: Path,
        order: Sequence[str],
        *,
        as_root: bool,
        progress: Callable[[str, int, int], None],
    ) -> None:
        super().__init__(name="hepml-layers", daemon=True)
        self.root, self.order, self.as_root, self.progress = root, list(order), as_root, progress
        self.ready: dict[str, Path] = {}
        self.ended = False  # no more files will come
        self.stop = False
        self.error: BaseException | None = None
        self.skipped = 0
        self.changed = threading.Condition()
        self.running: list[subprocess.Popen[bytes]] = []

    def offer(self, diff_id: str, path: Path) -> None:
        with self.changed:
            self.ready[diff_id] = path
            self.changed.notify()

    def finish(self, *, stop: bool = False) -> None:
        """No more layers will come; with ``stop``, end now (killing a running tar)."""
        with self.changed:
            self.ended = True
            self.stop = self.stop or stop
            self.changed.notify()
        if stop:
            for process in self.running:
                with contextlib.suppress(OSError):
                    process.kill()

    def wait(self) -> None:
        """Join, waking often so that the main thread still gets its signals (Ctrl-C)."""
        while self.is_alive():
            self.join(0.2)

    def _next(self, diff_id: str) -> Path | None:
        """The layer's file once it has arrived; None when told to stop."""
        with self.changed:
            while diff_id not in self.ready and not self.ended and not self.stop:
                self.changed.wait()
            if self.stop:
                return None
            if diff_id not in self.ready:
                raise RootfsError(f"the engine's archive of the image lacks {diff_id}")
            return self.ready[diff_id]

    def run(self) -> None:
        try:
            for index, diff_id in enumerate(self.order):
                path = self._next(diff_id)
                if path is None:
                    return
                if self.stop:
                    return
                self.skipped += _apply(self.root, path, as_root=self.as_root, running=self.running)
                if diff_id not in self.order[index + 1 :]:
                    path.unlink()
                self.progress("unpack", index + 1, len(self.order))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self.error = exc


def _spool(source: IO[bytes], target: Path, name: str) -> str:
    """Write the blob, decompressed, to ``target`` while hashing it; its diff ID.

    A layer's diff ID is the digest of its uncompressed tar: a classic archive stores that tar,
    an OCI archive stores blobs as the store keeps them (uncompressed, gzip or zstd).
    """
    digest = hashlib.sha256()
    try:
        with blobs.uncompressed(source) as data, target.open("wb") as sink:
            while block := data.read(_CHUNK):
                digest.update(block)
                sink.write(block)
    except blobs.BlobError as exc:
        target.unlink(missing_ok=True)
        raise RootfsError(
            f"the engine's archive of the image has a broken compressed blob {name}: {exc}"
        ) from None
    return f"sha256:{digest.hexdigest()}"


def flatten_stream(  # noqa: PLR0913 - keyword-only settings
    chunks: Iterator[bytes],
    order: Sequence[str],
    root: Path,
    *,
    spool: Path,
    epoch: int,
    progress: Callable[[str, int, int], None],
    total: int = 0,
) -> int:
    """Unpack a ``docker save`` archive, streamed as ``chunks``, into the empty directory ``root``.

    ``order`` is the image's layer diff IDs, base first (``RootFS.Layers``). Each layer file of
    the archive is written to ``spool``, decompressed when it is a gzip or zstd blob, while the
    SHA-256 of the uncompressed tar (its diff ID) is computed; a second thread applies the
    layers in ``order`` as soon as each has arrived, while the archive still streams. Layers
    are found by that digest, not through the archive's metadata, so this works for the classic
    (``<id>/layer.tar``) and the OCI (``blobs/sha256/…``, the containerd store's ``docker save``,
    nested indexes included) layouts alike. Returns how many device nodes were left out.
    """
    as_root = os.geteuid() == 0
    wanted = set(order)
    applier = _Applier(root, order, as_root=as_root, progress=progress)
    applier.start()
    received = [0]

    def counted(size: int) -> None:
        received[0] += size
        progress("export", received[0], max(total, received[0]))

    try:
        stream = io.BufferedReader(_Chunks(chunks, counted), buffer_size=_CHUNK)
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for number, member in enumerate(archive):
                if applier.error is not None:
                    break
                if not member.isfile() or not (
                    member.name.endswith("/layer.tar") or member.name.startswith("blobs/")
                ):
                    continue
                source = archive.extractfile(member)
                if source is None:
                    continue
                target = spool / f"{number}.tar"
                diff_id = _spool(source, target, member.name)
                if diff_id in wanted:
                    applier.offer(diff_id, target)
                else:
                    target.unlink()  # a configuration or manifest blob
        applier.finish()
        applier.wait()
    except BaseException:
        applier.finish(stop=True)
        applier.join()  # a killed tar ends at once; nothing may write into the tree after this
        raise
    if applier.error is not None:
        raise applier.error
    root.chmod(0o755)
    if as_root:
        os.chown(root, 0, 0)
    os.utime(root, ns=(epoch * 10**9, epoch * 10**9))
    return applier.skipped


def flatten(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    image_id: str,
    root: Path,
    *,
    spool: Path,
    epoch: int,
    progress: Callable[[str, int, int], None],
) -> Flattened:
    """The image's flat root filesystem in ``root``, from the engine's archive as it streams."""
    image = engine.image(image_id)
    order = list(image.layers) if image is not None else []
    if image is None or not order:
        raise RootfsError(f"the engine reports no layers for {image_id}")
    skipped = flatten_stream(
        engine.save(image_id),
        order,
        root,
        spool=spool,
        epoch=epoch,
        progress=progress,
        total=image.size,
    )
    config = {"architecture": image.architecture, "config": dict(image.config)}
    return Flattened(
        config=config, layers=len(order), owned_by_root=os.geteuid() == 0, skipped_devices=skipped
    )
