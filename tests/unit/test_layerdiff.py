"""hepml_images.layerdiff on synthetic layers and archives: diff IDs, differences, layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import TYPE_CHECKING

import pytest
import zstandard

from hepml_images import layerdiff
from tests.unit.archives import write_tar

if TYPE_CHECKING:
    from pathlib import Path

#: (name, content or None for a directory, mtime, mode)
Member = tuple[str, bytes | None, int, int]

BASE: list[Member] = [
    ("etc", None, 1700000000, 0o755),
    ("etc/hostname", b"box\n", 1700000000, 0o644),
    ("var/log/dpkg.log", b"2026-01-01 install x\n", 1700000000, 0o644),
]


def layer_tar(members: list[Member], *, link: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content, mtime, mode in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            archive.addfile(info)
    return buffer.getvalue()


def read(data: bytes) -> layerdiff.Layer:
    return layerdiff.read_layer(io.BytesIO(data))


def test_diff_id_is_the_sha256_of_the_uncompressed_tar() -> None:
    data = layer_tar(BASE)
    layer = read(data)
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert read(gzip.compress(data, mtime=0)).diff_id == layer.diff_id
    assert sorted(layer.entries) == ["etc", "etc/hostname", "var/log/dpkg.log"]
    entry = layer.entries["etc/hostname"]
    assert (entry.kind, entry.mode, entry.size) == ("file", 0o644, 4)
    assert entry.sha256 == hashlib.sha256(b"box\n").hexdigest()
    assert layer.entries["etc"].kind == "dir"


def test_identical_layers_have_no_differences() -> None:
    a, b = read(layer_tar(BASE)), read(layer_tar(BASE))
    assert a == b
    (comparison,) = layerdiff.compare_images([a], [b])
    assert comparison.identical
    assert comparison.differences == ()


def test_content_and_time_differences_are_named_per_path() -> None:
    changed = [
        *BASE[:2],
        ("var/log/dpkg.log", b"2026-01-02 install x\n", 1700000001, 0o644),
        ("new", b"", 0, 0o600),
    ]
    a, b = read(layer_tar(BASE)), read(layer_tar(changed, link=("lnk", "etc/hostname")))
    (comparison,) = layerdiff.compare_images([a], [b])
    assert not comparison.identical
    assert comparison.differences == (
        layerdiff.Difference(path="lnk", what="only-b"),
        layerdiff.Difference(path="new", what="only-b"),
        layerdiff.Difference(path="var/log/dpkg.log", what="changed", fields=("mtime", "sha256")),
    )
    assert b.entries["lnk"].link == "etc/hostname"
    assert layerdiff.diff_layers(b, a)[0] == layerdiff.Difference(path="lnk", what="only-a")


def test_a_mode_difference_alone_is_found() -> None:
    other = [BASE[0], ("etc/hostname", b"box\n", 1700000000, 0o600), BASE[2]]
    (diff,) = layerdiff.diff_layers(read(layer_tar(BASE)), read(layer_tar(other)))
    assert diff.fields == ("mode",)


def test_a_missing_layer_lists_all_its_paths() -> None:
    layer = read(layer_tar(BASE))
    comparisons = layerdiff.compare_images([layer, layer], [layer])
    assert comparisons[0].identical
    assert not comparisons[1].identical
    assert comparisons[1].diff_id_b is None
    assert {d.what for d in comparisons[1].differences} == {"only-a"}


def test_docker_save_classic_layout(tmp_path: Path) -> None:
    one, two = layer_tar(BASE[:1]), layer_tar(BASE)
    manifest = [{"Config": "c.json", "Layers": ["1/layer.tar", "2/layer.tar"]}]
    path = write_tar(
        tmp_path / "save.tar",
        {"manifest.json": json.dumps(manifest).encode(), "1/layer.tar": one, "2/layer.tar": two},
    )
    layers = layerdiff.read_saved_image(path)
    assert [x.diff_id for x in layers] == [read(one).diff_id, read(two).diff_id]


def _blob(data: bytes) -> tuple[str, str]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, "blobs/" + digest.replace(":", "/")


def test_oci_layout_with_a_nested_index_and_an_attestation(tmp_path: Path) -> None:
    layer = gzip.compress(layer_tar(BASE), mtime=0)
    layer_digest, layer_name = _blob(layer)
    manifest = json.dumps({"layers": [{"digest": layer_digest}]}).encode()
    manifest_digest, manifest_name = _blob(manifest)
    attestation = json.dumps({"layers": []}).encode()
    attestation_digest, attestation_name = _blob(attestation)
    inner = json.dumps(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": attestation_digest, "platform": {"os": "unknown"}},
                {"digest": manifest_digest, "platform": {"os": "linux"}},
            ],
        }
    ).encode()
    inner_digest, inner_name = _blob(inner)
    index = {"manifests": [{"digest": inner_digest}]}
    path = write_tar(
        tmp_path / "oci.tar",
        {
            "index.json": json.dumps(index).encode(),
            inner_name: inner,
            manifest_name: manifest,
            attestation_name: attestation,
            layer_name: layer,
        },
    )
    (only,) = layerdiff.read_saved_image(path)
    assert only.diff_id == read(layer_tar(BASE)).diff_id


def test_a_zstd_layer_is_read_like_its_tar(tmp_path: Path) -> None:
    """The containerd store keeps zstd layers as it pulled them, in one frame or several."""
    data = layer_tar(BASE)
    compressor = zstandard.ZstdCompressor()
    one_frame = compressor.compress(data)
    two_frames = compressor.compress(data[:700]) + compressor.compress(data[700:])
    assert read(one_frame) == read(two_frames) == read(data)
    digest, name = _blob(two_frames)
    manifest = json.dumps({"layers": [{"digest": digest}]}).encode()
    manifest_digest, manifest_name = _blob(manifest)
    index = json.dumps({"manifests": [{"digest": manifest_digest}]}).encode()
    path = write_tar(
        tmp_path / "oci.tar", {"index.json": index, manifest_name: manifest, name: two_frames}
    )
    assert layerdiff.read_saved_image(path) == [read(data)]


def test_unreadable_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(layerdiff.LayerFormatError, match="not a tar archive once its zstd"):
        layerdiff.read_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 64))
    zipped = gzip.compress(layer_tar(BASE), mtime=0)
    with pytest.raises(layerdiff.LayerFormatError, match="broken compressed layer: broken gzip"):
        read(zipped[:20] + b"\0" * 40 + zipped[60:])
    squeezed = zstandard.ZstdCompressor().compress(layer_tar(BASE))
    with pytest.raises(layerdiff.LayerFormatError, match="broken compressed layer: broken zstd"):
        read(squeezed[:10] + b"\xff" * 20 + squeezed[30:])
    with pytest.raises(layerdiff.LayerFormatError, match=r"^not a tar archive: "):
        read(b"plain text, not a tar" * 100)
    broken = write_tar(
        tmp_path / "b.tar",
        {"manifest.json": json.dumps([{"Layers": ["l"]}]).encode(), "l": zipped[:-30]},
    )
    with pytest.raises(layerdiff.LayerFormatError, match=r"b\.tar: layer l: broken compressed"):
        layerdiff.read_saved_image(broken)
    with pytest.raises(layerdiff.LayerFormatError, match="not an image archive"):
        layerdiff.read_saved_image(write_tar(tmp_path / "x.tar", {"hello": b"x"}))
    missing = write_tar(
        tmp_path / "m.tar", {"manifest.json": json.dumps([{"Layers": ["nope"]}]).encode()}
    )
    with pytest.raises(layerdiff.LayerFormatError, match="missing"):
        layerdiff.read_saved_image(missing)
