"""Canonical images: the layers a build added, with times clamped, and a canonical config.

Neither builder gives identical images for identical inputs everywhere: the classic builder
never rewrites file times, and BuildKit's ``rewrite-timestamp`` works only with an OCI export,
which the ``docker`` driver refuses on graph-driver stores (overlay2) and the containerd
store's image exporter refuses as "conflicts with unpack" (see docs/reproducibility.md). So,
after either backend built an image, ``normalize`` rewrites it once, the same way on every
engine and store:

- the layers the build added (the parent's layers are kept byte for byte, so a child still
  shares them) become a canonical function of the change they make to the file system below
  them (the parent's layers and the new ones before, as rewritten, merged as a ``Tree`` with
  OCI whiteouts applied), so that the two stores' differs, which write different tars for the
  same step, give the same bytes. Per new layer: whiteouts are empty regular files (mode 0,
  owner 0, time 0, never hardlinks); an opaque marker of a directory that is not one below,
  and a whiteout of nothing below, are dropped, as are a non-directory identical to what is
  below in everything and a directory identical but for its mtime (overlayfs copies up);
  every time newer than the epoch is clamped to it; each header holds only the name, type,
  mode, owner ids, mtime, size, link target, device numbers (devices only) and the
  ``SCHILY.xattr.*`` PAX records (no user or group names, no other records); the entries are
  ordered depth first by path component (in a directory: its opaque marker, its whiteouts,
  the rest, by name), and in each hardlink group the first member in that order carries the
  data and the others link to it;
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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hepml_images import blobs, ir
from hepml_images.blobs import OPAQUE, WHITEOUT
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
#: Chunks (of ``_CHUNK`` bytes) spooled between two such looks.
_CHECK_EVERY_CHUNKS = 64
_XATTR = "SCHILY.xattr."
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    """What one path of a file system is, as layer tars say it (hardlinks resolved)."""

    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[str, str], ...]
    #: where a regular file's content is (read only when compared), else ``None``
    content: Content | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, eq=False)
class Content:
    """Where a regular file's bytes are in a layer tar that stays open: read when compared.

    Reading a parent's layers for what is below a new one needs only their headers: a file's
    content matters only where a new layer has a file of the same metadata at the same path.
    """

    file: IO[bytes]
    offset: int
    size: int

    def same_as(self, data: IO[bytes] | None) -> bool:
        """Whether ``data`` holds exactly these bytes (``size`` of them, then nothing)."""
        if data is None:
            return self.size == 0
        self.file.seek(self.offset)
        left = self.size
        while left > 0:
            mine = self.file.read(min(_CHUNK, left))
            theirs = data.read(len(mine))
            if not mine or mine != theirs:
                return False
            left -= len(mine)
        return not data.read(1)


def _path(name: str) -> str:
    """A member's name as a path key: no leading ``./`` or ``/``, no trailing ``/``."""
    while name.startswith(("./", "/")):
        name = name[1:] if name.startswith("/") else name[2:]
    return name.rstrip("/") or "."


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in member.pax_headers.items() if k.startswith(_XATTR)))


def _meta(member: tarfile.TarInfo, mtime: float, content: Content | None = None) -> Meta:
    kind = tarfile.REGTYPE if member.type in _REGULAR else member.type
    device = kind in _DEVICES
    return Meta(
        type=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime=mtime,
        size=member.size if kind == tarfile.REGTYPE else 0,
        linkname=member.linkname if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "",
        devmajor=member.devmajor if device else 0,
        devminor=member.devminor if device else 0,
        xattrs=_xattrs(member),
        content=content,
    )


class Tree:
    """The merged file system of a stack of layers: path → ``Meta`` (OCI whiteouts applied)."""

    def __init__(self) -> None:
        self.entries: dict[str, Meta] = {}
        self._children: dict[str, set[str]] = {}

    def exists(self, path: str) -> bool:
        """Whether ``path`` is there (an entry, or a directory only its children name)."""
        return path in self.entries or bool(self._children.get(path))

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (the root always is)."""
        meta = self.entries.get(path)
        if meta is not None:
            return meta.type == tarfile.DIRTYPE
        return path in {"", "."} or bool(self._children.get(path))

    def set(self, path: str, meta: Meta) -> None:
        """Put ``meta`` at ``path`` (what was there, if not a directory, goes)."""
        old = self.entries.get(path)
        if old is not None and old.type == tarfile.DIRTYPE and meta.type != tarfile.DIRTYPE:
            self.clear(path)
        self.entries[path] = meta
        while path:
            parent = _parent(path)
            siblings = self._children.setdefault(parent, set())
            if path in siblings:
                break
            siblings.add(path)
            path = parent

    def remove(self, path: str) -> None:
        """Remove ``path`` and everything under it (a whiteout)."""
        self.clear(path)
        self.entries.pop(path, None)
        self._children.get(_parent(path), set()).discard(path)

    def clear(self, path: str) -> None:
        """Remove everything under ``path``, keeping it (an opaque marker)."""
        for child in self._children.pop(path, set()):
            self.clear(child)
            self.entries.pop(child, None)

    def apply(self, layer: IO[bytes], check: Callable[[], None] = lambda: None) -> None:
        """Apply a plain layer tar on top: its whiteouts hide what is below, then its entries.

        ``layer`` is seekable and stays open as long as the tree is used: its files' contents
        are read from it when compared (``Content``).
        """
        with tarfile.open(fileobj=layer, mode="r:") as reader:
            added: list[tuple[str, Meta | str]] = []
            for number, member in enumerate(reader):
                if number % _CHECK_EVERY == 0:
                    check()
                path = _path(member.name)
                base = path.rpartition("/")[2]
                if base == OPAQUE:
                    self.clear(_parent(path))
                elif base.startswith(WHITEOUT):
                    self.remove(f"{_parent(path)}/{base[len(WHITEOUT) :]}".lstrip("/"))
                elif member.islnk():
                    added.append((path, _path(member.linkname)))
                else:
                    content = (
                        Content(layer, member.offset_data, member.size) if member.isreg() else None
                    )
                    added.append((path, _meta(member, member.mtime, content)))
        for path, what in added:
            # a hardlink is what its target is
            meta = self.entries.get(what) if isinstance(what, str) else what
            if meta is not None:
                self.set(path, meta)


def _key(path: str) -> tuple[tuple[int, str], ...]:
    """The canonical order: depth first; in a directory its opaque marker, whiteouts, the rest."""
    if path == ".":
        return ()
    return tuple(
        (0 if part == OPAQUE else 1 if part.startswith(WHITEOUT) else 2, part)
        for part in path.split("/")
    )


def _prefixes(path: str) -> Iterator[str]:
    """``a``, ``a/b``, … ``path`` itself last."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        yield "/".join(parts[:end])


def _clamped(meta: Meta, epoch: int) -> Meta:
    return replace(meta, mtime=min(int(meta.mtime), epoch))


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry of the canonical layer: where its header and its data come from."""

    path: str
    #: ``None`` for a whiteout or an opaque marker
    meta: Meta | None
    #: the member whose data the entry carries (a regular file, or a hardlink group's first)
    data: tarfile.TarInfo | None = None


def _plan(
    reader: tarfile.TarFile,
    members: Sequence[tarfile.TarInfo],
    epoch: int,
    below: Tree,
) -> list[_Entry]:
    """The entries of the canonical layer, in order (see the module doc for the rules)."""
    layer: dict[str, tarfile.TarInfo] = {}
    for member in members:
        layer[_path(member.name)] = member  # a name given twice: the last one counts
    opaque: set[str] = set()
    whiteouts: set[str] = set()
    rest: dict[str, tarfile.TarInfo] = {}
    for path, member in layer.items():
        parent, _, base = path.rpartition("/")
        if base == OPAQUE:
            if below.is_dir(parent or "."):
                opaque.add(path)
        elif base.startswith(WHITEOUT):
            hidden = f"{parent}/{base[len(WHITEOUT) :]}".lstrip("/")
            if below.exists(hidden):
                whiteouts.add(path)
        else:
            rest[path] = member
    gone = {f"{_parent(w)}/{w.rpartition('/')[2][len(WHITEOUT) :]}".lstrip("/") for w in whiteouts}
    cleared = {_parent(o) for o in opaque}

    # hardlink groups: every link, by the regular file of this layer that it names in the end
    groups: dict[str, list[str]] = {}
    for path, member in rest.items():
        if not member.islnk():
            continue
        root, seen = _path(member.linkname), {path}
        while (target := rest.get(root)) is not None and target.islnk() and root not in seen:
            seen.add(root)
            root = _path(target.linkname)
        if (target := rest.get(root)) is not None and target.isreg():
            groups.setdefault(root, [root]).append(path)
    grouped = {path for paths in groups.values() for path in paths}

    entries = [_Entry(path, None) for path in (*opaque, *whiteouts)]
    for path, member in rest.items():
        if path in grouped:
            continue
        meta = _meta(member, min(int(member.mtime), epoch))
        if member.islnk():  # a link to what is below this layer: kept as it is
            entries.append(_Entry(path, replace(meta, linkname=_path(member.linkname))))
            continue
        covered = (
            "" in cleared  # an opaque root
            or any(p in gone for p in _prefixes(path))
            or any(p in cleared for p in _prefixes(_parent(path)))
        )
        old = None if covered or path == "." else below.entries.get(path)
        if old is not None:
            old = _clamped(old, epoch)
            if meta.type == tarfile.DIRTYPE and replace(old, mtime=meta.mtime) == meta:
                continue
            if (
                meta.type != tarfile.DIRTYPE
                and old == meta
                and (
                    not member.isreg()
                    or (old.content is not None and old.content.same_as(reader.extractfile(member)))
                )
            ):
                continue
        entries.append(_Entry(path, meta, member if member.isreg() else None))
    for root, paths in groups.items():
        first, *links = sorted(paths, key=_key)
        data = rest[root]
        meta = _meta(data, min(int(data.mtime), epoch))
        entries.append(_Entry(first, meta, data))
        link = replace(meta, type=tarfile.LNKTYPE, size=0, linkname=first)
        entries.extend(_Entry(path, link) for path in links)
    return sorted(entries, key=lambda entry: _key(entry.path))


def _header(entry: _Entry) -> tarfile.TarInfo:
    """The canonical header: the fields that say what the file is, nothing else."""
    info = tarfile.TarInfo(entry.path)
    info.uname = info.gname = ""
    meta = entry.meta
    if meta is None:  # whiteouts and opaque markers: empty regular files of no one, at time 0
        info.type, info.mode, info.mtime = tarfile.REGTYPE, 0, 0
        return info
    info.type, info.mode, info.uid, info.gid = meta.type, meta.mode, meta.uid, meta.gid
    info.mtime, info.size, info.linkname = int(meta.mtime), meta.size, meta.linkname
    info.devmajor, info.devminor = meta.devmajor, meta.devminor
    info.pax_headers = dict(meta.xattrs)
    return info


def clamp_layer(  # noqa: PLR0913 - keyword settings
    source: IO[bytes],
    target: IO[bytes],
    epoch: int,
    check: Callable[[], None] = lambda: None,
    *,
    below: Tree | None = None,
    spool: Path | None = None,
) -> str:
    """The canonical form of a layer over the file system ``below``; its diff ID.

    ``source`` is plain, gzip or zstd (``blobs.uncompressed``: broken compressed data raises
    ``blobs.BlobError``, a broken tar ``tarfile.TarError``); it is spooled, decompressed, to a
    temporary file in ``spool`` to be read in the canonical order. ``check`` is called every few
    thousand entries (a cancel raises from it).
    """
    below = below if below is not None else Tree()
    sink = _Hashing(target)
    buffered = io.BufferedWriter(sink, buffer_size=_CHUNK)
    with tempfile.TemporaryFile(dir=spool) as raw:
        plain = blobs.uncompressed(source)
        for number, chunk in enumerate(iter(partial(plain.read, _CHUNK), b"")):
            if number % _CHECK_EVERY_CHUNKS == 0:
                check()
            raw.write(chunk)
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r:") as reader:
            members = []
            for number, member in enumerate(reader):
                if number % _CHECK_EVERY == 0:
                    check()
                members.append(member)
            entries = _plan(reader, members, epoch, below)
            with tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as writer:
                for number, entry in enumerate(entries):
                    if number % _CHECK_EVERY == 0:
                        check()
                    data = reader.extractfile(entry.data) if entry.data is not None else None
                    writer.addfile(_header(entry), data)
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
        tree = Tree()
        with contextlib.ExitStack() as opened, tarfile.open(saved.path, mode="r:") as archive:
            for number, name in enumerate(saved.layers):
                shown = f"canonical layer {number + 1}/{len(saved.layers)}"
                progress(shown)
                source = blobs.member(archive, name)
                if source is None:
                    raise BuildError(f"the engine's archive lacks the layer {name}")
                spooled = Path(tmp) / f"{number}.tar"
                check = partial(progress, shown)
                try:
                    with spooled.open("wb") as sink:
                        if number < keep:
                            diff_ids.append(copy_layer(source, sink))
                        else:
                            diff_ids.append(
                                clamp_layer(source, sink, epoch, check, below=tree, spool=Path(tmp))
                            )
                    if number + 1 < len(saved.layers):  # what the next layer is compared with
                        tree.apply(opened.enter_context(spooled.open("rb")), check)
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
