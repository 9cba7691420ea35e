"""The canonical rewrite of a built image: pure over tars written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import TYPE_CHECKING

import pytest
import zstandard

from hepml_images.build.normalize import (
    canonical_config,
    clamp_layer,
    read_saved,
    rewrite,
)
from hepml_images.errors import BuildError
from tests.unit.archives import write_tar

if TYPE_CHECKING:
    from pathlib import Path

EPOCH = 1_700_000_000


def layer(entries: list[tuple[str, bytes | None, float, dict[str, str]]]) -> bytes:
    """A layer tar: (name, content or None for a directory, mtime, PAX records)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data, mtime, pax in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.pax_headers = dict(pax)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getmembers()


def built_at(when: float) -> bytes:
    """The same step's layer as a build at time ``when`` leaves it."""
    return layer(
        [
            ("etc", None, when, {"atime": str(when)}),
            ("etc/app.conf", b"x = 1\n", when + 0.25, {"ctime": str(when), "SCHILY.xattr.a": "b"}),
            ("usr/share/doc/old", b"from a package\n", 1_000_000_000, {}),
        ]
    )


def test_two_builds_at_different_times_give_the_same_layer() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    a = clamp_layer(io.BytesIO(built_at(1_800_000_000)), first, EPOCH)
    b = clamp_layer(io.BytesIO(built_at(1_900_000_123.5)), second, EPOCH)
    assert a == b == f"sha256:{hashlib.sha256(first.getvalue()).hexdigest()}"
    assert first.getvalue() == second.getvalue()
    got = {m.name: m for m in members(first.getvalue())}
    assert got["etc"].mtime == EPOCH
    assert got["etc/app.conf"].mtime == EPOCH
    assert "atime" not in got["etc"].pax_headers
    assert "ctime" not in got["etc/app.conf"].pax_headers
    # what the file is stays: its extended attributes, and older times
    assert got["etc/app.conf"].pax_headers["SCHILY.xattr.a"] == "b"
    assert got["usr/share/doc/old"].mtime == 1_000_000_000


def test_content_changes_still_show() -> None:
    changed = layer([("etc", None, 1_800_000_000, {}), ("etc/app.conf", b"x = 2\n", 0, {})])
    same = layer([("etc", None, 1_800_000_000, {}), ("etc/app.conf", b"x = 1\n", 0, {})])
    assert clamp_layer(io.BytesIO(changed), io.BytesIO(), EPOCH) != clamp_layer(
        io.BytesIO(same), io.BytesIO(), EPOCH
    )


def test_a_gzip_layer_is_read_plain() -> None:
    plain, zipped = io.BytesIO(), io.BytesIO()
    a = clamp_layer(io.BytesIO(built_at(1_800_000_000)), plain, EPOCH)
    b = clamp_layer(io.BytesIO(gzip.compress(built_at(1_800_000_000), mtime=5)), zipped, EPOCH)
    assert a == b


def test_the_config_keeps_what_describes_the_image_only() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-12-02T01:02:03.456Z",
        "container": "0123abcd",
        "docker_version": "28.5.2",
        "config": {"Env": ["A=1"], "Hostname": "0123abcd", "Image": "sha256:aa", "Labels": {}},
        "container_config": {"Hostname": "0123abcd"},
        "history": [
            {"created": "2026-12-02T01:02:03Z", "created_by": "RUN x", "comment": "buildkit"},
            {"created": "2026-12-02T01:02:04Z", "created_by": "ENV A=1", "empty_layer": True},
        ],
        "rootfs": {"type": "layers", "diff_ids": ["sha256:old"]},
    }
    document = json.loads(canonical_config(config, ["sha256:new"], EPOCH))
    assert set(document) == {"architecture", "os", "config", "created", "rootfs", "history"}
    assert document["created"] == "2023-11-14T22:13:20Z"
    assert document["config"] == {"Env": ["A=1"], "Labels": {}}
    assert document["rootfs"] == {"type": "layers", "diff_ids": ["sha256:new"]}
    assert [h["created"] for h in document["history"]] == ["2023-11-14T22:13:20Z"] * 2
    assert document["history"][1]["empty_layer"] is True
    assert canonical_config(config, ["sha256:new"], EPOCH) == canonical_config(
        {**config, "created": "1999-01-01T00:00:00Z", "container": "ffff"}, ["sha256:new"], EPOCH
    )


def test_where_the_ca_bundle_was_served_is_not_part_of_the_image() -> None:
    def history(created_by: str) -> dict[str, object]:
        return {"history": [{"created_by": created_by}], "config": {}}

    served = "RUN |1 HEPML_CA_URL=http://172.17.0.1:20464/hepml-ca-ab.pem /bin/sh -c apt-get x"
    classic = "|1 HEPML_CA_URL=http://172.29.0.1:31000/hepml-ca-ab.pem /bin/sh -c apt-get x"
    plain = canonical_config(history("RUN /bin/sh -c apt-get x"), [], EPOCH)
    assert canonical_config(history(served), [], EPOCH) == plain
    assert json.loads(canonical_config(history(classic), [], EPOCH))["history"][0][
        "created_by"
    ] == ("/bin/sh -c apt-get x")
    other = canonical_config(history("RUN |1 OTHER=1 /bin/sh -c apt-get x"), [], EPOCH)
    assert other != plain


def test_label_steps_leave_no_history() -> None:
    """However the labels got there (a LABEL, --label, a relabelling), the same image."""
    steps = [
        {"created_by": "/bin/sh -c #(nop)  LABEL a=1", "empty_layer": True},
        {"created_by": "LABEL b=2", "empty_layer": True, "comment": "buildkit.dockerfile.v0"},
        {"created_by": "ENV C=3", "empty_layer": True},
        {"created_by": "RUN /bin/sh -c true"},
    ]
    document = json.loads(canonical_config({"history": steps, "config": {}}, [], EPOCH))
    assert [h["created_by"] for h in document["history"]] == ["ENV C=3", "RUN /bin/sh -c true"]


def saved_archive(path: Path, layers: list[bytes], *, oci: bool) -> Path:
    """A ``docker save`` archive: ``<id>/layer.tar`` names, or Docker 25+'s blobs."""
    diff_ids = [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in layers]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": diff_ids}, "history": []}
    ).encode()
    config_name = f"blobs/sha256/{hashlib.sha256(config).hexdigest()}" if oci else "c.json"
    names = [
        f"blobs/sha256/{d.removeprefix('sha256:')}" if oci else f"{n}/layer.tar"
        for n, d in enumerate(diff_ids)
    ]
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["x:1"], "Layers": names}])
    with tarfile.open(path, "w") as archive:
        for name, data in [
            (config_name, config),
            ("manifest.json", manifest.encode()),
            *zip(names, layers, strict=True),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("oci", [False, True])
def test_the_parent_layers_are_kept_byte_for_byte(tmp_path: Path, *, oci: bool) -> None:
    parent = layer([("bin", None, 1_999_999_999, {})])  # newer than the epoch, but the parent's
    saved = read_saved(saved_archive(tmp_path / "in.tar", [parent, built_at(2e9)], oci=oci))
    digest, config = rewrite(
        saved, tmp_path / "out.tar", keep=1, epoch=EPOCH, tag="x:1", progress=lambda _: None
    )
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert diff_ids[0] == f"sha256:{hashlib.sha256(parent).hexdigest()}"
    assert diff_ids[1] == clamp_layer(io.BytesIO(built_at(2e9)), io.BytesIO(), EPOCH)
    assert digest == f"sha256:{hashlib.sha256(config).hexdigest()}"
    with tarfile.open(tmp_path / "out.tar") as out:
        manifest = json.load(out.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["x:1"]
        assert manifest[0]["Config"] == f"{digest.removeprefix('sha256:')}.json"
        for name, diff_id in zip(manifest[0]["Layers"], diff_ids, strict=True):
            data = out.extractfile(name).read()  # type: ignore[union-attr]
            assert f"sha256:{hashlib.sha256(data).hexdigest()}" == diff_id
    # and the rewrite itself is a function of its input
    again, _ = rewrite(
        saved, tmp_path / "again.tar", keep=1, epoch=EPOCH, tag="x:1", progress=lambda _: None
    )
    assert again == digest
    assert (tmp_path / "again.tar").read_bytes() == (tmp_path / "out.tar").read_bytes()


def test_an_archive_without_an_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"x\.tar is not a readable image archive: neither"):
        read_saved(write_tar(tmp_path / "x.tar", {"hello": b"x"}))
    with pytest.raises(BuildError, match=r"oci\.tar holds 0 images, not one"):
        read_saved(write_tar(tmp_path / "oci.tar", {"index.json": b"{}"}))
    two = json.dumps([{"Config": "c.json", "Layers": []}] * 2).encode()
    with pytest.raises(BuildError, match="holds 2 images, not one"):
        read_saved(write_tar(tmp_path / "two.tar", {"manifest.json": two}))
    no_config = json.dumps([{"Config": "c.json", "Layers": []}]).encode()
    with pytest.raises(BuildError, match=r"lacks its configuration c\.json"):
        read_saved(write_tar(tmp_path / "c.tar", {"manifest.json": no_config}))


def _blob(data: bytes) -> tuple[str, str]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, "blobs/" + digest.replace(":", "/")


def test_a_bare_oci_layout_with_a_zstd_layer_is_rewritten(tmp_path: Path) -> None:
    """BuildKit's ``--output type=oci``: ``index.json`` only, layers kept compressed."""
    plain = built_at(2e9)
    layer_digest, layer_name = _blob(zstandard.ZstdCompressor().compress(plain))
    config = json.dumps({"architecture": "amd64", "os": "linux", "history": []}).encode()
    config_digest, config_name = _blob(config)
    manifest = json.dumps(
        {"config": {"digest": config_digest}, "layers": [{"digest": layer_digest}]}
    ).encode()
    manifest_digest, manifest_name = _blob(manifest)
    index = json.dumps({"manifests": [{"digest": manifest_digest}]}).encode()
    path = write_tar(
        tmp_path / "oci.tar",
        {
            "index.json": index,
            manifest_name: manifest,
            config_name: config,
            layer_name: zstandard.ZstdCompressor().compress(plain),
        },
    )
    saved = read_saved(path)
    assert saved.layers == (layer_name,)
    assert saved.config["architecture"] == "amd64"
    _, written = rewrite(
        saved, tmp_path / "out.tar", keep=0, epoch=EPOCH, tag="x:1", progress=lambda _: None
    )
    clamped = clamp_layer(io.BytesIO(plain), io.BytesIO(), EPOCH)
    assert json.loads(written)["rootfs"]["diff_ids"] == [clamped]


def test_a_broken_layer_is_a_build_error_that_names_it(tmp_path: Path) -> None:
    good = gzip.compress(built_at(2e9), mtime=0)
    broken = good[:20] + b"\0" * 40 + good[60:]
    for layers in ([broken], [layer([]), broken]):
        saved = read_saved(saved_archive(tmp_path / "in.tar", layers, oci=False))
        with pytest.raises(BuildError, match=r"broken layer \d/layer\.tar: broken gzip data"):
            rewrite(
                saved, tmp_path / "out.tar", keep=1, epoch=EPOCH, tag="x:1", progress=lambda _: None
            )
