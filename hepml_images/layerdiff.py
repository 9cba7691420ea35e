"""Two images, compared layer by layer and file by file. Pure over bytes and open streams.

Input: layer tars (plain, gzip or zstd, as ``docker save`` writes them from either image store)
or a whole image archive (``docker save``, or a bare OCI layout). Output: for each layer, its diff
ID (the sha256 of the uncompressed tar, what ``RootFS.Layers`` lists) and its entries (path, type,
mode, owner, mtime, content hash, link target, extended attributes); and the differences between
two images, per layer: which paths are only on one side and which fields of a shared path differ.

This is what "built twice, the same image?" needs: equal diff IDs say yes; when they are not
equal, the differences say which files (and which of their properties) made them differ. Nothing
here prints, reads the clock or talks to an engine.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, fields
from typing import IO, TYPE_CHECKING, cast

from hepml_images import blobs

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

_CHUNK = 1 << 20


class LayerFormatError(ValueError):
    """A layer or archive this module cannot read (broken compression, not a tar, no manifest)."""


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One tar member of a layer, reduced to what makes two layers differ."""

    path: str
    #: "file", "dir", "symlink", "hardlink", "char", "block", "fifo"
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    #: sha256 of the content (files only; empty otherwise)
    sha256: str
    #: symlink or hard-link target
    link: str
    #: extended attributes and other PAX records, sorted (``SCHILY.xattr.*``, times …)
    pax: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer: its diff ID and its entries by path."""

    diff_id: str
    entries: Mapping[str, Entry]


@dataclass(frozen=True, kw_only=True)
class Difference:
    """One path that differs between two layers at the same position."""

    path: str
    #: "only-a", "only-b" or "changed"
    what: str
    #: the fields that differ, for "changed" (``("mtime", "sha256")`` …)
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class LayerComparison:
    """Layer ``index`` of both images: equal diff IDs, or the paths that differ."""

    index: int
    diff_id_a: str | None
    diff_id_b: str | None
    differences: tuple[Difference, ...]

    @property
    def identical(self) -> bool:
        """Both layers exist and have the same diff ID."""
        return self.diff_id_a is not None and self.diff_id_a == self.diff_id_b


_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}

#: Fields of ``Entry`` compared by ``diff_layers`` (the path is the key).
COMPARED = tuple(f.name for f in fields(Entry) if f.name != "path")


def _normal_path(name: str) -> str:
    name = name.removeprefix("./").rstrip("/")
    return name or "."


class _HashingReader:
    """A read-only stream that hashes what passes through it (the layer's diff ID)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hash.update(data)
        return data


def _entry(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
    digest = ""
    if member.isfile():
        source = archive.extractfile(member)
        assert source is not None  # noqa: S101 - a regular file always has content
        content = hashlib.sha256()
        while chunk := source.read(_CHUNK):
            content.update(chunk)
        digest = content.hexdigest()
    return Entry(
        path=_normal_path(member.name),
        kind=_KINDS.get(member.type, "other"),
        mode=member.mode,
        uid=member.uid,
        gid=member.gid,
        mtime=float(member.pax_headers.get("mtime", member.mtime)),
        size=member.size if member.isfile() else 0,
        sha256=digest,
        link=member.linkname,
        pax=tuple(sorted((k, v) for k, v in member.pax_headers.items() if k != "mtime")),
    )


def read_layer(raw: IO[bytes]) -> Layer:
    """Every entry of one layer tar (plain, gzip or zstd), and its diff ID."""
    plain = blobs.uncompressed(raw)
    reader = _HashingReader(plain)
    entries: dict[str, Entry] = {}
    try:
        with tarfile.open(fileobj=cast("IO[bytes]", reader), mode="r|") as archive:
            for member in archive:
                entries[_normal_path(member.name)] = _entry(archive, member)
        while reader.read(_CHUNK):  # the tar's zero blocks and padding count for the diff ID
            pass
    except blobs.BlobError as exc:
        raise LayerFormatError(f"broken compressed layer: {exc}") from None
    except tarfile.TarError as exc:
        undone = "" if plain.compression == "none" else f" once its {plain.compression} is undone"
        raise LayerFormatError(f"not a tar archive{undone}: {exc}") from None
    return Layer(diff_id=f"sha256:{reader.hash.hexdigest()}", entries=entries)


def read_saved_image(path: Path) -> list[Layer]:
    """The layers of the first image in an image archive, bottom first.

    Three layouts work: ``docker save`` of the classic store (``manifest.json`` naming
    ``<id>/layer.tar``), ``docker save`` of Docker 25+ and of the containerd image store
    (``manifest.json`` naming ``blobs/sha256/<digest>``), and a bare OCI layout as BuildKit's
    ``--output type=oci`` writes it (``index.json`` only, nested indexes followed). Layers may be
    plain, gzip or zstd (the containerd store keeps them as it pulled them).
    """
    with tarfile.open(path, mode="r:") as archive:
        try:
            images = blobs.archived_images(archive)
        except blobs.BlobError as exc:
            raise LayerFormatError(str(exc)) from None
        if not images:
            raise LayerFormatError(f"{path} holds no image")
        layers = []
        for name in images[0].layers:
            blob = blobs.member(archive, name)
            if blob is None:
                raise LayerFormatError(f"{path}: layer {name} is missing")
            try:
                layers.append(read_layer(blob))
            except LayerFormatError as exc:
                raise LayerFormatError(f"{path}: layer {name}: {exc}") from None
        return layers


def diff_layers(a: Layer, b: Layer) -> tuple[Difference, ...]:
    """The paths that differ between two layers, sorted by path."""
    out: list[Difference] = []
    for path in sorted(a.entries.keys() | b.entries.keys()):
        left, right = a.entries.get(path), b.entries.get(path)
        if right is None:
            out.append(Difference(path=path, what="only-a"))
        elif left is None:
            out.append(Difference(path=path, what="only-b"))
        else:
            changed = tuple(n for n in COMPARED if getattr(left, n) != getattr(right, n))
            if changed:
                out.append(Difference(path=path, what="changed", fields=changed))
    return tuple(out)


def compare_images(a: Sequence[Layer], b: Sequence[Layer]) -> tuple[LayerComparison, ...]:
    """Layer by layer, bottom first: equal diff IDs, or the differences of the files."""
    out: list[LayerComparison] = []
    for index in range(max(len(a), len(b))):
        left = a[index] if index < len(a) else None
        right = b[index] if index < len(b) else None
        if left is not None and right is not None:
            differences = () if left.diff_id == right.diff_id else diff_layers(left, right)
        else:
            empty = Layer(diff_id="", entries={})
            differences = diff_layers(left or empty, right or empty)
        out.append(
            LayerComparison(
                index=index,
                diff_id_a=left.diff_id if left else None,
                diff_id_b=right.diff_id if right else None,
                differences=differences,
            )
        )
    return tuple(out)
