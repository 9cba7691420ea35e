"""Layer blobs and image archives: the one place that knows their formats. Pure over open streams.

In: a blob as an open binary stream (a layer as ``docker save`` or an OCI layout keeps it: a
plain tar, gzip or zstd), or an open image archive (``docker save`` of either image store, or a
bare OCI layout as BuildKit's ``--output type=oci`` writes it). Out: the blob's uncompressed
bytes as a stream that decompresses as it is read (the compression is told by the magic bytes,
not by a name or a media type; no blob is ever held in memory whole), and the images an archive
holds, each as the names of its configuration and layer members.

Nothing here prints, writes or talks to an engine. What cannot be read raises ``BlobError``,
saying what failed; the callers turn it into their own errors.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import tarfile
    from collections.abc import Mapping

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
#: What ``uncompressed`` undid.
Compression = Literal["none", "gzip", "zstd"]
#: What Python's gzip raises for broken data: a bad header, a cut stream, bad deflate data.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


#: A whiteout's name prefix (``.wh.NAME`` hides NAME below): OCI image layer spec.
WHITEOUT = ".wh."
#: The marker of an opaque directory (its children below are hidden): OCI image layer spec.
OPAQUE = ".wh..wh..opq"


class BlobError(ValueError):
    """A blob or an image archive that cannot be read; the message says what failed."""


class Uncompressed(io.BufferedReader):
    """A blob's bytes, uncompressed as they are read; ``compression`` says what is undone."""

    def __init__(self, raw: io.RawIOBase, compression: Compression) -> None:
        super().__init__(raw, buffer_size=_CHUNK)
        self.compression: Compression = compression


def uncompressed(raw: IO[bytes]) -> Uncompressed:
    """``raw``'s bytes as they are read, gzip or zstd undone (by the magic), else as they are.

    A read raises ``BlobError`` where the decompressor finds the data broken. (A zstd stream cut
    short inside a frame is not one of those: python-zstandard ends it quietly, and what it
    yields is then short, which the tar reader or the diff ID notices.) Closing the result leaves
    ``raw`` open.
    """
    head = b""
    while len(head) < len(ZSTD_MAGIC) and (more := raw.read(len(ZSTD_MAGIC) - len(head))):
        head += more
    prefixed = _Prefixed(head, raw)
    if head.startswith(GZIP_MAGIC):
        unzipped = gzip.GzipFile(fileobj=io.BufferedReader(prefixed, buffer_size=_CHUNK), mode="rb")
        return Uncompressed(_Checked(unzipped, "gzip", _GZIP_ERRORS), "gzip")
    if head == ZSTD_MAGIC:
        import zstandard  # noqa: PLC0415 - only images with zstd layers need it

        # a layer may be written as several frames: read them all, not only the first
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BufferedReader(prefixed, buffer_size=_CHUNK), read_across_frames=True, closefd=False
        )
        return Uncompressed(_Checked(reader, "zstd", (zstandard.ZstdError,)), "zstd")
    return Uncompressed(prefixed, "none")


class _Prefixed(io.RawIOBase):
    """``head`` (the bytes already read to tell the format) followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer of any kind
        view = memoryview(buffer).cast("B")
        if self._head:
            size = min(len(view), len(self._head))
            view[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._raw.read(len(view))
        view[: len(data)] = data
        return len(data)


class _Decoder(Protocol):
    """What ``_Checked`` reads: gzip's and zstandard's readers, which share no class."""

    def readinto(self, buffer: memoryview, /) -> int: ...
    def close(self) -> None: ...


class _Checked(io.RawIOBase):
    """A decompressing stream whose decoder errors become ``BlobError``."""

    def __init__(self, stream: _Decoder, kind: str, errors: tuple[type[Exception], ...]) -> None:
        self._stream = stream
        self._kind = kind
        self._errors = errors

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer of any kind
        try:
            return self._stream.readinto(memoryview(buffer))
        except self._errors as exc:
            raise BlobError(f"broken {self._kind} data: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def member(archive: tarfile.TarFile, name: str) -> IO[bytes] | None:
    """The content of the archive's file ``name``; None where there is no such file."""
    try:
        return archive.extractfile(name)
    except KeyError:
        return None


@dataclass(frozen=True, kw_only=True)
class ArchivedImage:
    """One image of an image archive, as the names of its members."""

    #: the configuration's member; None where the manifest names none (its layers still read)
    config: str | None
    #: the layers' members, bottom first (plain, gzip or zstd tars: see ``uncompressed``)
    layers: tuple[str, ...]


def archived_images(archive: tarfile.TarFile) -> tuple[ArchivedImage, ...]:
    """The images of an image archive, in the order the archive lists them (possibly none).

    ``manifest.json`` names them in every layout ``docker save`` writes (``<id>/layer.tar`` from
    the classic store, ``blobs/sha256/…`` from Docker ≥ 25 and the containerd store); without
    it, ``index.json`` leads to them through nested indexes, where the first image manifest of
    each index is taken (not an attestation: BuildKit gives those an unknown platform).
    """
    saved = member(archive, "manifest.json")
    name = "manifest.json" if saved is not None else "index.json"
    try:
        if saved is not None:
            return _saved_images(json.load(saved))
        index = member(archive, "index.json")
        if index is None:
            raise BlobError("neither manifest.json nor index.json: not an image archive")
        return tuple(_oci_image(archive, d) for d in _images_of(json.load(index)))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise BlobError(
            f"the archive's {name} or a manifest it names is malformed ({exc!r})"
        ) from exc


def _saved_images(document: Any) -> tuple[ArchivedImage, ...]:  # noqa: ANN401 - JSON
    if not isinstance(document, list):
        raise BlobError("the archive's manifest.json is not a list of images")
    images = []
    for entry in document:
        config = entry.get("Config")
        images.append(
            ArchivedImage(
                config=None if config is None else str(config),
                layers=tuple(str(layer) for layer in entry["Layers"]),
            )
        )
    return tuple(images)


def _images_of(index: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The descriptors of an index that point at images (not at attestations)."""
    out = []
    for descriptor in index.get("manifests") or []:
        annotations = descriptor.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        if (descriptor.get("platform") or {}).get("os") == "unknown":
            continue
        out.append(descriptor)
    return out


def _oci_image(archive: tarfile.TarFile, descriptor: Mapping[str, Any]) -> ArchivedImage:
    document = _json_blob(archive, descriptor["digest"])
    while document.get("mediaType") in _INDEX_TYPES or "manifests" in document:
        images = _images_of(document)
        if not images:
            raise BlobError("the archive's index holds no image manifest")
        document = _json_blob(archive, images[0]["digest"])
    config = (document.get("config") or {}).get("digest")
    return ArchivedImage(
        config=None if config is None else blob_name(config),
        layers=tuple(blob_name(layer["digest"]) for layer in document["layers"]),
    )


def blob_name(digest: str) -> str:
    """Where an OCI layout keeps the blob ``digest`` (``blobs/sha256/<hex>``)."""
    return "blobs/" + str(digest).replace(":", "/", 1)


def _json_blob(archive: tarfile.TarFile, digest: str) -> Any:  # noqa: ANN401 - JSON
    blob = member(archive, blob_name(digest))
    if blob is None:
        raise BlobError(f"blob {digest} is missing from the archive")
    return json.load(blob)
