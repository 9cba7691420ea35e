"""OCI image → SIF file or sandbox directory (side effects: engine, files, subprocesses).

In: an engine (``hepml_images.engine``), the ID of the image that passed its smoke tests, where to
write, and the epoch that fixes every time the output records. Out: a SIF whose primary system
partition is the image's flat root filesystem plus the Apptainer layout (``layout``), squashed by
mksquashfs, with a definition-file object naming the image and a labels object; or the same tree as
a directory (a sandbox, what CVMFS and grid sites unpack).

Reproducible: the files keep the image's own times (Python's timestamp-checked ``.pyc`` files
stay valid), what is added gets ``epoch``, mksquashfs runs with ``-reproducible`` (its default)
and ``-mkfs-time epoch``, and the SIF writer takes the epoch and an ID derived from the content.
The same image and epoch give byte-identical files.

With ``apptainer`` (or ``singularity``) installed and asked for, it builds the SIF itself from
``docker-daemon:``; the native path needs only mksquashfs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hepml_images.errors import HepmlError
from hepml_images.hashing import sha256_file
from hepml_images.sif import format as sif_format
from hepml_images.sif import layout, rootfs

if TYPE_CHECKING:
    from collections.abc import Callable

    from hepml_images.engine import Engine

APPTAINER_COMMANDS = ("apptainer", "singularity")
#: mksquashfs's progress bar: "[=====|    ] 1234/5678  21%"
_PERCENT = re.compile(rb"\] +\d+/\d+ +(\d+)%")


class SifFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """Making the SIF file or the sandbox failed."""


@dataclass(frozen=True, kw_only=True)
class Made:
    """A SIF file (or sandbox) and what went into it."""

    path: Path
    size: int
    sha256: str
    image_id: str
    reference: str
    epoch: int
    builder: str
    seconds: dict[str, float]


#: squashfs compressors of a SIF: gzip runs everywhere; zstd needs Apptainer >= 1.4.
Compression = Literal["gzip", "zstd"]


def find_apptainer() -> str | None:
    """The Apptainer (or SingularityCE) command on PATH, if any."""
    for name in APPTAINER_COMMANDS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def definition(reference: str, image_id: str) -> bytes:
    """The SIF's definition-file object: how it was made (``apptainer inspect --deffile``)."""
    return (
        f"# made by hepml-images from the image {image_id}\n"
        f"Bootstrap: docker-daemon\nFrom: {reference}\n"
    ).encode()


def sif_id(*parts: bytes) -> uuid.UUID:
    """An ID derived from the content (a random one would change every run)."""
    digest = hashlib.sha256(b"\0".join(parts)).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def _clear(directory: Path) -> None:
    def writable(func: Callable[..., object], path: str, _exc: object) -> None:
        os.chmod(path, 0o700)  # noqa: PTH101 - rmtree's callback hands over a str
        func(path)

    shutil.rmtree(directory, onerror=writable)


def squash(  # noqa: PLR0913 - keyword-only settings
    root: Path,
    target: Path,
    *,
    epoch: int,
    all_root: bool,
    progress: Callable[[str, int, int], None],
    compression: Compression = "gzip",
) -> None:
    """Squash the tree with mksquashfs: reproducible, own file times, ``epoch`` as mkfs time."""
    argv = ["mksquashfs", str(root), str(target), "-noappend", "-mkfs-time", str(epoch)]
    if compression != "gzip":
        argv += ["-comp", compression]
    if all_root:
        argv.append("-all-root")
    # SOURCE_DATE_EPOCH would make mksquashfs overwrite every file time (stale .pyc files)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    process = subprocess.Popen(  # noqa: S603 - fixed argv of paths we made
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    assert process.stdout is not None  # noqa: S101
    tail = b""
    try:
        while chunk := process.stdout.read1(1 << 14):  # type: ignore[attr-defined]
            tail = (tail + chunk)[-4000:]
            found = _PERCENT.findall(chunk)
            if found:
                progress("squashfs", int(found[-1]), 100)
    except BaseException:  # Ctrl-C, SIGTERM: mksquashfs must not outlive us
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()
    if process.wait() != 0:
        lines = [ln for ln in re.split(rb"[\r\n]", tail) if ln.strip() and b"%" not in ln]
        raise SifFailed(
            f"mksquashfs exited with status {process.returncode}: "
            + b" / ".join(lines[-4:]).decode(errors="replace"),
            hint="check free space next to the output file",
        )


def _prepare_tree(
    engine: Engine,
    image_id: str,
    work: Path,
    *,
    epoch: int,
    progress: Callable[[str, int, int], None],
) -> tuple[Path, rootfs.Flattened, dict[str, float]]:
    started = time.monotonic()
    root, spool = work / "rootfs", work / "layers"
    root.mkdir()
    spool.mkdir()
    flat = rootfs.flatten(engine, image_id, root, spool=spool, epoch=epoch, progress=progress)
    spool.rmdir()
    layout.install(root, layout.entries(flat.config.get("config") or {}), epoch=epoch)
    seconds = {"export+unpack": time.monotonic() - started}
    return root, flat, seconds


def _workdir(near: Path) -> Path:
    near.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".hepml-sif-", dir=near))


def make_sif(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    image_id: str,
    output: Path,
    *,
    reference: str,
    epoch: int,
    progress: Callable[[str, int, int], None],
    apptainer: str | None = None,
    compression: Compression = "gzip",
) -> Made:
    """Write the SIF of the image to ``output`` (replaced only once the new file is complete).

    ``compression`` of the squashfs: gzip (what every Apptainer and SingularityCE runs) or zstd
    (smaller and faster to read; needs Apptainer >= 1.4 to run; native builder only).
    """
    seconds: dict[str, float] = {}
    work = _workdir(output.parent)
    partial = work / "image.sif"
    try:
        if apptainer is not None:
            started = time.monotonic()
            _apptainer_build(apptainer, reference, partial, epoch=epoch, progress=progress)
            seconds["apptainer"] = time.monotonic() - started
            builder = Path(apptainer).name
        else:
            root, flat, seconds = _prepare_tree(
                engine, image_id, work, epoch=epoch, progress=progress
            )
            started = time.monotonic()
            squashfs = work / "rootfs.squashfs"
            squash(
                root,
                squashfs,
                epoch=epoch,
                all_root=not flat.owned_by_root,
                progress=progress,
                compression=compression,
            )
            _clear(root)
            seconds["squashfs"] = time.monotonic() - started
            started = time.monotonic()
            _write(flat, squashfs, partial, deffile=definition(reference, image_id), epoch=epoch)
            seconds["sif"] = time.monotonic() - started
            builder = "native"
        partial.chmod(0o644)
        partial.replace(output)
    finally:
        _clear(work)
    return Made(
        path=output,
        size=output.stat().st_size,
        sha256=sha256_file(output),
        image_id=image_id,
        reference=reference,
        epoch=epoch,
        builder=builder,
        seconds=seconds,
    )


def _write(
    flat: rootfs.Flattened,
    squashfs: Path,
    target: Path,
    *,
    deffile: bytes,
    epoch: int,
) -> None:
    config = flat.config.get("config") or {}
    labels = layout.labels_json(config.get("Labels") or {})
    arch = sif_format.arch_code(str(flat.config.get("architecture") or "amd64"))
    objects = [
        sif_format.SifObject(
            data_type=sif_format.DataType.DEFFILE, name="definition", source=deffile
        ),
        sif_format.SifObject(data_type=sif_format.DataType.LABELS, name="labels", source=labels),
        sif_format.SifObject(
            data_type=sif_format.DataType.PARTITION,
            name="rootfs",
            source=squashfs,
            partition=sif_format.PartitionInfo(
                fs_type=sif_format.FsType.SQUASH,
                part_type=sif_format.PartType.PRIMSYS,
                arch=arch,
            ),
        ),
    ]
    identity = sif_id(sha256_file(squashfs).encode(), deffile, labels)
    sif_format.write_sif(target, objects, sif_id=identity, created=epoch)


def _apptainer_build(
    command: str,
    reference: str,
    target: Path,
    *,
    epoch: int,
    progress: Callable[[str, int, int], None],
) -> None:
    """Run ``apptainer build`` from the engine's image (reproducible with Apptainer ≥ 1.5)."""
    argv = [command, "build", "--force", str(target), f"docker-daemon:{reference}"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    process = subprocess.run(  # noqa: S603 - fixed argv; the reference is one we tagged
        argv, capture_output=True, env=env, check=False
    )
    progress("apptainer build", 100, 100)
    if process.returncode != 0:
        text = (process.stderr or process.stdout).decode(errors="replace").strip().splitlines()
        raise SifFailed(
            f"{Path(command).name} build failed (exit {process.returncode}): "
            + " / ".join(text[-4:]),
            hint="--builder native makes the SIF without Apptainer",
        )


def make_sandbox(
    engine: Engine,
    image_id: str,
    output: Path,
    *,
    epoch: int,
    progress: Callable[[str, int, int], None],
) -> Made:
    """Unpack the image plus the Apptainer layout into the new directory ``output``."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SifFailed(
            f"{output} exists and is not an empty directory: nothing was written",
            hint="choose a new directory, or remove this one first",
        )
    work = _workdir(output.parent)
    try:
        root, _, seconds = _prepare_tree(engine, image_id, work, epoch=epoch, progress=progress)
        if output.exists():
            output.rmdir()
        root.replace(output)
    finally:
        _clear(work)
    return Made(
        path=output,
        size=sum(p.lstat().st_size for p in output.rglob("*")),
        sha256="",
        image_id=image_id,
        reference="",
        epoch=epoch,
        builder="native",
        seconds=seconds,
    )


def existing(path: Path, image_id: str, reference: str) -> Made:
    """A SIF file made earlier from the same tested image (its labels say so)."""
    return Made(
        path=path,
        size=path.stat().st_size,
        sha256=sha256_file(path),
        image_id=image_id,
        reference=reference,
        epoch=sif_format.read_sif(path).created,
        builder="existing",
        seconds={},
    )


def summary(made: Made) -> dict[str, object]:
    """The JSON form of a result."""
    return {
        "path": str(made.path),
        "size": made.size,
        "sha256": made.sha256,
        "image_id": made.image_id,
        "reference": made.reference,
        "epoch": made.epoch,
        "builder": made.builder,
        "seconds": {k: round(v, 1) for k, v in made.seconds.items()},
    }
