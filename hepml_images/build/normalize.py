"""Canonical images: the layers a build added, with times clamped, and a canonical config.

Neither builder gives identical images for identical inputs everywhere: the classic builder
never rewrites file times, and BuildKit's ``rewrite-timestamp`` works only with an OCI export,
which the ``docker`` driver refuses on graph-driver stores (overlay2) and the containerd
store's image exporter refuses as "conflicts with unpack" (see docs/reproducibility.md). So,
after either backend built an image, ``normalize`` rewrites it once, the same way on every
engine and store:

- the layers the build added (the parent's layers are kept byte for byte, so a child still
  shares them): every time newer than the epoch is clamped to it (the member's mtime and its
  PAX ``mtime``; the PAX ``atime``/``ctime`` records are dropped); the order of the entries,
  their content, modes, owners, links and extended attributes are kept;
- the configuration: only what describes the image (``architecture``, ``os``, ``variant``,
  ``config`` without the builder's container fields, ``rootfs``, ``history`` without the
  entries of LABEL steps and without where the CA bundle was served), with ``created`` and
  every history time set to the epoch, as canonical JSON.

The result is loaded as a ``docker save`` archive (``manifest.json`` and plain layer tars),
which both stores read; its ID is then what the engine says (the config digest on overlay2,
the manifest digest on the containerd store), and the same inputs give the same ID.
The functions over tars are pure; ``normalize`` does the engine's part.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hepml_images import blobs, ir
from hepml_images.errors import BuildError
from hepml_images.render.writers import CA_ARG
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from hepml_images.engine import Engine
    from hepml_images.resolve import ResolvedVariant

_CHUNK = 1 << 20
#: Entries of a layer copied between two looks at whether the build was cancelled.
_CHECK_EVERY = 2000
#: PAX records that carry times of access and change: never part of what a file is.
_DROPPED_PAX = ("atime", "ctime", "LIBARCHIVE.creationtime")
#: The builder's container settings in ``config`` (the classic builder fills them in).
_CONTAINER_FIELDS = ("Hostname", "Domainname", "Image", "ArgsEscaped")
#: The CA bundle's URL as both builders record a RUN's build argument in its history entry
#: (``RUN |1 HEPML_CA_URL=http://172.17.0.1:20464/… /bin/sh -c …``): it says where this machine
#: served the bundle (its bridge, a port), not what the image is, and is left out.
_CA_IN_HISTORY = re.compile(rf"^((?:RUN )?)\|1 {CA_ARG}=\S* ")
#: The parts of an image configuration that describe the image (OCI image spec).
_IMAGE_FIELDS = ("architecture", "os", "os.version", "os.features", "variant", "config")


@dataclass(frozen=True, kw_only=True)
class Saved:
    """A ``docker save`` archive on disk: its configuration and its layer members."""

    path: Path
    config: Mapping[str, Any]
    #: the archive members holding the layers, bottom first (plain, gzip or zstd tars)
    layers: tuple[str, ...]


def read_saved(path: Path) -> Saved:
    """The configuration and layer names of the one image in an image archive.

    ``docker save`` names them in its ``manifest.json`` in every layout it writes
    (``<id>/layer.tar`` from old engines, ``blobs/sha256/…`` from Docker ≥ 25 and the containerd
    store); a bare OCI layout is read through its ``index.json`` (``blobs.archived_images``).
    """
    with tarfile.open(path, mode="r:") as archive:
        try:
            images = blobs.archived_images(archive)
        except blobs.BlobError as exc:
            raise BuildError(f"{path.name} is not a readable image archive: {exc}") from None
        if len(images) != 1:
            raise BuildError(f"{path.name} holds {len(images)} images, not one")
        (image,) = images
        config_member = blobs.member(archive, image.config) if image.config is not None else None
        if config_member is None:
            raise BuildError(f"{path.name} lacks its configuration {image.config}")
        config = json.load(config_member)
    return Saved(path=path, config=config, layers=image.layers)


class _Hashing(io.RawIOBase):
    """A sink that writes through to ``target`` and hashes what it wrote."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # noqa: ANN401 - bytes-like
        chunk = bytes(data)
        self.hash.update(chunk)
        self.target.write(chunk)
        return len(chunk)


def clamp_member(member: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    """The member with its times clamped to ``epoch`` and its access/change times dropped."""
    member.mtime = min(int(member.mtime), epoch)
    pax = dict(member.pax_headers)
    for key in _DROPPED_PAX:
        pax.pop(key, None)
    if "mtime" in pax:
        pax.pop("mtime")  # tarfile writes it again when the clamped time needs it
    member.pax_headers = pax
    return member


def clamp_layer(
    source: IO[bytes],
    target: IO[bytes],
    epoch: int,
    check: Callable[[], None] = lambda: None,
) -> str:
    """Copy a layer tar with every time clamped to ``epoch``; the new layer's diff ID.

    ``source`` is plain, gzip or zstd (``blobs.uncompressed``: broken compressed data raises
    ``blobs.BlobError``, a broken tar ``tarfile.TarError``). ``check`` is called every few
    thousand entries (a cancel raises from it).
    """
    sink = _Hashing(target)
    buffered = io.BufferedWriter(sink, buffer_size=_CHUNK)
    with (
        tarfile.open(fileobj=blobs.uncompressed(source), mode="r|") as reader,
        tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as writer,
    ):
        for number, member in enumerate(reader):
            if number % _CHECK_EVERY == 0:
                check()
            data = reader.extractfile(member) if member.isreg() else None
            writer.addfile(clamp_member(member, epoch), data)
    buffered.flush()
    return f"sha256:{sink.hash.hexdigest()}"


def copy_layer(source: IO[bytes], target: IO[bytes]) -> str:
    """Copy a layer tar as it is (decompressed: see ``clamp_layer``); its diff ID."""
    digest = hashlib.sha256()
    plain = blobs.uncompressed(source)
    while chunk := plain.read(_CHUNK):
        digest.update(chunk)
        target.write(chunk)
    return f"sha256:{digest.hexdigest()}"


def _is_label_step(entry: Mapping[str, Any]) -> bool:
    """A history entry of a LABEL (no layer): the labels are the configuration's already.

    Left out because how labels got there is not part of what the image is: the classic builder
    writes one entry per ``--label`` and per relabelling, BuildKit none for ``--label``; an
    image that inherits a label from its parent and one that sets it again are the same image.
    """
    if not entry.get("empty_layer"):
        return False
    step = str(entry.get("created_by", "")).removeprefix("/bin/sh -c #(nop) ").strip()
    return step.startswith("LABEL ")


def canonical_config(config: Mapping[str, Any], diff_ids: Sequence[str], epoch: int) -> bytes:
    """The image configuration that depends on nothing but the image: see the module doc."""
    created = rfc3339(epoch)
    document: dict[str, Any] = {key: config[key] for key in _IMAGE_FIELDS if key in config}
    inner = dict(document.get("config") or {})
    for key in _CONTAINER_FIELDS:
        inner.pop(key, None)
    document["config"] = inner
    document["created"] = created
    document["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    history = []
    for entry in config.get("history") or []:
        if _is_label_step(entry):
            continue
        kept = {k: entry[k] for k in ("created_by", "comment", "empty_layer") if k in entry}
        if "created_by" in kept:
            kept["created_by"] = _CA_IN_HISTORY.sub(r"\1", str(kept["created_by"]), count=1)
        history.append({**kept, "created": created})
    document["history"] = history
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def rewrite(  # noqa: PLR0913 - keyword-only settings
    saved: Saved,
    target: Path,
    *,
    keep: int,
    epoch: int,
    tag: str,
    progress: Callable[[str], None],
) -> tuple[str, bytes]:
    """Write the canonical image as a ``docker save`` archive; (its config digest, config)."""
    diff_ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hepml-normalize-", dir=target.parent) as tmp:
        layer_files = []
        with tarfile.open(saved.path, mode="r:") as archive:
            for number, name in enumerate(saved.layers):
                shown = f"canonical layer {number + 1}/{len(saved.layers)}"
                progress(shown)
                source = blobs.member(archive, name)
                if source is None:
                    raise BuildError(f"the engine's archive lacks the layer {name}")
                spooled = Path(tmp) / f"{number}.tar"
                try:
                    with spooled.open("wb") as sink:
                        if number < keep:
                            diff_ids.append(copy_layer(source, sink))
                        else:
                            check = partial(progress, shown)
                            diff_ids.append(clamp_layer(source, sink, epoch, check))
                except (blobs.BlobError, tarfile.TarError) as exc:
                    raise BuildError(
                        f"the engine's archive has a broken layer {name}: {exc}"
                    ) from None
                layer_files.append(spooled)
        config = canonical_config(saved.config, diff_ids, epoch)
        config_hex = hashlib.sha256(config).hexdigest()
        layer_names = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
        manifest = json.dumps(
            [{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": layer_names}]
        ).encode()
        with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
            for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = epoch
                out.addfile(info, io.BytesIO(data))
            written: set[str] = set()
            for name, spooled in zip(layer_names, layer_files, strict=True):
                if name in written:  # the same layer twice (an empty step repeated)
                    continue
                written.add(name)
                info = out.gettarinfo(str(spooled), arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
                with spooled.open("rb") as handle:
                    out.addfile(info, handle)
    return f"sha256:{config_hex}", config


def _stream_to(chunks: Iterator[bytes], path: Path) -> None:
    with path.open("wb") as sink:
        for chunk in chunks:
            sink.write(chunk)


def normalize(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    image_id: str,
    *,
    parent_layers: int,
    epoch: int,
    tag: str,
    progress: Callable[[str], None],
) -> str:
    """The canonical form of a built image, loaded and tagged ``tag``; its engine ID.

    The built image is removed when the canonical one replaces it (nothing else refers to it).
    """
    workdir = Path(tempfile.mkdtemp(prefix="hepml-normalize-"))
    try:
        progress("canonical image: reading the build")
        saved_path = workdir / "built.tar"
        _stream_to(engine.save(image_id), saved_path)
        saved = read_saved(saved_path)
        archive = workdir / "canonical.tar"
        config_digest, config = rewrite(
            saved, archive, keep=parent_layers, epoch=epoch, tag=tag, progress=progress
        )
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        saved_path.unlink()
        progress("canonical image: loading")
        engine.load(archive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    loaded = engine.image(tag)
    # the containerd store names a loaded archive by a manifest digest it made, without the
    # configuration's: there the layers say that it is the canonical image
    if loaded is None or (
        config_digest not in {loaded.id, loaded.config_digest}
        and (loaded.config_digest is not None or list(loaded.layers) != diff_ids)
    ):
        raise BuildError(f"loading the canonical form of {tag} left another image under it")
    if loaded.id != image_id:
        with contextlib.suppress(Exception):
            engine.remove_image(image_id)
    return loaded.id


def canonical(
    engine: Engine,
    image_id: str,
    variant: ResolvedVariant,
    *,
    epoch: int,
    progress: Callable[[str], None],
) -> str:
    """``normalize`` a Dockerfile build of ``variant``: its parent's layers are kept as they are."""
    plan = variant.plan
    base = plan.base
    parent_ref = variant.parent.content_ref if variant.parent is not None else None
    if parent_ref is None and isinstance(base, ir.FromImage):
        parent_ref = base.ref
    parent = engine.image(parent_ref) if parent_ref is not None else None
    built = engine.image(image_id)
    if built is None:
        raise BuildError(f"the engine has no image {image_id} after building it")
    keep = len(parent.layers) if parent is not None else 0
    if parent is not None and tuple(built.layers[:keep]) != tuple(parent.layers):
        raise BuildError(
            f"{variant.content_ref} does not start with the layers of its parent {parent_ref}"
        )
    return normalize(
        engine,
        image_id,
        parent_layers=keep,
        epoch=epoch,
        tag=variant.content_ref,
        progress=progress,
    )
