"""hepml_images.blobs on blobs and archives the tests write: plain, gzip and zstd, every layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from typing import IO, TYPE_CHECKING

import pytest
import zstandard

from hepml_images import blobs
from tests.unit.archives import write_tar

if TYPE_CHECKING:
    from pathlib import Path


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


#: large enough for several reads of the 1 MiB buffers, and not all alike (compresses, not to zero)
TAR = layer_tar({"etc/os": b"debian\n", "data/big": bytes(range(256)) * 12_000})


def _zstd_frames(data: bytes, parts: int) -> bytes:
    step = len(data) // parts + 1
    compressor = zstandard.ZstdCompressor()
    return b"".join(compressor.compress(data[i : i + step]) for i in range(0, len(data), step))


COMPRESSED = {
    "none": TAR,
    "gzip": gzip.compress(TAR, mtime=0),
    # two members: what concatenated gzip writers leave
    "gzip-2": gzip.compress(TAR[:5000], mtime=0) + gzip.compress(TAR[5000:], mtime=0),
    "zstd": zstandard.ZstdCompressor().compress(TAR),
    # a store may write a layer in several frames: all are read, not only the first
    "zstd-3": _zstd_frames(TAR, 3),
}


class Source(io.RawIOBase):
    """A blob's stream that counts what was taken from it and hands out at most ``most`` a read."""

    def __init__(self, data: bytes, most: int = 1 << 16) -> None:
        self._data = io.BytesIO(data)
        self.most = most
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._data.read(min(len(buffer), self.most))
        buffer[: len(data)] = data
        self.taken += len(data)
        return len(data)

    def readall(self) -> bytes:
        pytest.fail("the whole blob was read at once")


def drain(stream: IO[bytes]) -> bytes:
    """All of ``stream``, read as tarfile and the spoolers read it: a piece at a time."""
    return b"".join(iter(lambda: stream.read(1 << 16), b""))


@pytest.mark.parametrize("form", sorted(COMPRESSED))
def test_each_form_reads_back_as_the_tar(form: str) -> None:
    stream = blobs.uncompressed(Source(COMPRESSED[form]))  # type: ignore[arg-type]
    assert stream.compression == form.split("-", maxsplit=1)[0]
    assert stream.read() == TAR
    with tarfile.open(fileobj=blobs.uncompressed(io.BytesIO(COMPRESSED[form])), mode="r|") as tar:
        assert [m.name for m in tar] == ["etc/os", "data/big"]


@pytest.mark.parametrize("form", ["none", "gzip", "zstd"])
def test_a_blob_is_read_as_it_is_needed_not_whole(form: str) -> None:
    big = layer_tar({"noise": random.Random(0).randbytes(8 << 20)})  # noqa: S311 - noise
    data = {"none": big, "gzip": gzip.compress(big), "zstd": zstandard.compress(big)}[form]
    source = Source(data)
    stream = blobs.uncompressed(source)  # type: ignore[arg-type]
    assert stream.read(10) == big[:10]
    assert source.taken <= 3 << 20  # a few buffers' worth, not the blob
    assert hashlib.sha256(drain(stream)).digest() == hashlib.sha256(big[10:]).digest()


def test_short_reads_and_tiny_blobs() -> None:
    # a source that hands out one byte a read still has its magic recognised
    assert blobs.uncompressed(Source(COMPRESSED["zstd"], most=1)).read() == TAR  # type: ignore[arg-type]
    for tiny in (b"", b"\x1f", b"ab", b"\x28\xb5\x2f"):
        stream = blobs.uncompressed(io.BytesIO(tiny))
        assert (stream.compression, stream.read()) == ("none", tiny)


def test_closing_the_stream_leaves_the_source_open() -> None:
    for data in COMPRESSED.values():
        source = io.BytesIO(data)
        with blobs.uncompressed(source) as stream:
            stream.read(100)
        assert not source.closed


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (COMPRESSED["gzip"][:20] + b"\0" * 40 + COMPRESSED["gzip"][60:], "broken gzip data: "),
        (COMPRESSED["gzip"][:-30], "broken gzip data: Compressed file ended"),
        (b"\x1f\x8b" + b"\0" * 30, "broken gzip data: "),
        (COMPRESSED["zstd"][:10] + b"\xff" * 20 + COMPRESSED["zstd"][30:], "broken zstd data: "),
    ],
    ids=["gzip-damaged", "gzip-cut", "gzip-header", "zstd-damaged"],
)
def test_broken_compressed_data_is_a_blob_error(data: bytes, match: str) -> None:
    stream = blobs.uncompressed(io.BytesIO(data))
    with pytest.raises(blobs.BlobError, match=match):
        drain(stream)


# archives -----------------------------------------------------------------------------------------


def _archive(path: Path, files: dict[str, bytes]) -> tarfile.TarFile:
    return tarfile.open(write_tar(path, files))


def _blob(files: dict[str, bytes], document: object) -> str:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    files[blobs.blob_name(digest)] = data
    return digest


def test_manifest_json_lists_every_image(tmp_path: Path) -> None:
    manifest = [
        {"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["1/layer.tar", "2/layer.tar"]},
        {"Config": "blobs/sha256/b", "Layers": []},
        {"Layers": ["3/layer.tar"]},  # no configuration named: the layers still read
    ]
    with _archive(tmp_path / "s.tar", {"manifest.json": json.dumps(manifest).encode()}) as tar:
        assert blobs.archived_images(tar) == (
            blobs.ArchivedImage(config="a.json", layers=("1/layer.tar", "2/layer.tar")),
            blobs.ArchivedImage(config="blobs/sha256/b", layers=()),
            blobs.ArchivedImage(config=None, layers=("3/layer.tar",)),
        )
        assert blobs.member(tar, "manifest.json") is not None
        assert blobs.member(tar, "nope") is None


def test_index_json_leads_through_nested_indexes_past_attestations(tmp_path: Path) -> None:
    files: dict[str, bytes] = {}
    layer = _blob(files, zstandard.compress(TAR))
    config = _blob(files, {"architecture": "amd64"})
    image = _blob(files, {"config": {"digest": config}, "layers": [{"digest": layer}]})
    attestation = _blob(files, {"config": {"digest": config}, "layers": []})
    inner = _blob(
        files,
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": attestation, "platform": {"os": "unknown"}},
                {
                    "digest": attestation,
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                },
                {"digest": image, "platform": {"os": "linux"}},
            ],
        },
    )
    files["index.json"] = json.dumps({"manifests": [{"digest": inner}, {"digest": image}]}).encode()
    with _archive(tmp_path / "oci.tar", files) as tar:
        expected = blobs.ArchivedImage(
            config=blobs.blob_name(config), layers=(blobs.blob_name(layer),)
        )
        assert blobs.archived_images(tar) == (expected, expected)
        member = blobs.member(tar, blobs.blob_name(layer))
        assert member is not None
        assert blobs.uncompressed(member).read() == TAR


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"hello": b"x"}, "neither manifest.json nor index.json: not an image archive"),
        ({"manifest.json": b"{not json"}, r"manifest\.json or a manifest it names is malformed"),
        ({"manifest.json": b'{"Layers": []}'}, r"manifest\.json is not a list of images"),
        ({"manifest.json": b'[{"Config": "c"}]'}, r"malformed \(KeyError\('Layers'\)\)"),
        ({"index.json": b'{"manifests": [{"digest": "sha256:00"}]}'}, "blob sha256:00 is missing"),
        ({"index.json": b'{"manifests": [{}]}'}, r"index\.json .* malformed \(KeyError"),
    ],
    ids=["no-metadata", "bad-json", "not-a-list", "no-layers", "missing-blob", "no-digest"],
)
def test_unreadable_archives_say_what_failed(
    tmp_path: Path, files: dict[str, bytes], match: str
) -> None:
    with _archive(tmp_path / "x.tar", files) as tar, pytest.raises(blobs.BlobError, match=match):
        blobs.archived_images(tar)


def test_an_index_of_no_image_holds_none_and_a_nested_one_is_an_error(tmp_path: Path) -> None:
    files: dict[str, bytes] = {"index.json": b"{}"}
    with _archive(tmp_path / "empty.tar", files) as tar:
        assert blobs.archived_images(tar) == ()
    inner = _blob(files, {"manifests": [{"digest": "sha256:aa", "platform": {"os": "unknown"}}]})
    files["index.json"] = json.dumps({"manifests": [{"digest": inner}]}).encode()
    with (
        _archive(tmp_path / "nested.tar", files) as tar,
        pytest.raises(blobs.BlobError, match="the archive's index holds no image manifest"),
    ):
        blobs.archived_images(tar)
