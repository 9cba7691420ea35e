"""The canonical rewrite of a built image: pure over tars written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import TYPE_CHECKING, Any

import pytest
import zstandard

from hepml_images.build.normalize import (
    Tree,
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


# --- the canonical layer over the file system below it ------------------------------------------

PARENT_TIME = 1_600_000_000


def entry(  # noqa: PLR0913 - one keyword per header field
    name: str,
    data: bytes | None = None,
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    mtime: float = PARENT_TIME,
    link: str = "",
    pax: dict[str, str] | None = None,
    uname: str = "",
    uid: int = 0,
) -> tuple[tarfile.TarInfo, bytes | None]:
    """One member for ``tar``: a regular file when ``data`` is given, else ``kind``."""
    info = tarfile.TarInfo(name)
    info.type = kind if data is None else tarfile.REGTYPE
    info.mode, info.mtime, info.linkname, info.uname, info.gname = mode, mtime, link, uname, uname
    info.uid = info.gid = uid
    info.pax_headers = dict(pax or {})
    if data is not None:
        info.size = len(data)
    return info, data


def directory(
    name: str, mtime: float = PARENT_TIME, *, mode: int = 0o755, **kw: Any
) -> tuple[tarfile.TarInfo, None]:
    info, _ = entry(name, kind=tarfile.DIRTYPE, mode=mode, mtime=mtime, **kw)
    return info, None


def tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tree_of(*layers: bytes) -> Tree:
    tree = Tree()
    for data in layers:
        tree.apply(io.BytesIO(data))
    return tree


def canonical(data: bytes, *below: bytes) -> tuple[str, bytes]:
    out = io.BytesIO()
    diff_id = clamp_layer(io.BytesIO(data), out, EPOCH, below=tree_of(*below))
    return diff_id, out.getvalue()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


BUILD_TIME = 1_800_000_000.5

PARENT = tar(
    directory("etc"),
    entry("etc/passwd", b"root:x:0:0\n"),
    entry("etc/old", b"to be removed\n"),
    directory("etc/gone.d"),
    entry("etc/gone.d/a.conf", b"a\n"),
    directory("tmp", mode=0o1777),
    directory("var"),
    directory("var/cache"),
    directory("var/cache/debconf"),
    entry("var/cache/debconf/config.dat", b"Name: x\n", mode=0o600),
    directory("var/lib"),
    entry("var/lib/touched", b"same bytes\n"),
)


def overlay2_style() -> bytes:
    """The step as the overlay2 differ writes it: copy-ups, opaque new dirs, linked whiteouts."""
    atime = {"atime": str(BUILD_TIME), "ctime": str(BUILD_TIME)}
    return tar(
        directory("var", mtime=BUILD_TIME, uname="root", pax=atime),
        directory("var/cache", mtime=BUILD_TIME, uname="root"),
        directory("var/cache/debconf", mtime=BUILD_TIME, uname="root"),
        entry("var/cache/debconf/config.dat", b"Name: x\n", mode=0o600, uname="root", pax=atime),
        directory("usr", mtime=BUILD_TIME, uname="root"),
        directory("usr/new", mtime=BUILD_TIME, uname="root"),
        entry("usr/new/.wh..wh..opq", b"", mode=0o600, mtime=BUILD_TIME, uname="root"),
        entry("usr/new/z", b"linked data\n", mode=0o755, mtime=BUILD_TIME, uname="root"),
        entry("usr/new/a", kind=tarfile.LNKTYPE, link="usr/new/z", mode=0o755, uname="root"),
        directory("tmp", mode=0o1777, mtime=BUILD_TIME, uname="root"),
        directory("etc", mtime=BUILD_TIME, uname="root"),
        entry("etc/passwd", b"root:x:0:0\nhep:x:1000:1000\n", mtime=BUILD_TIME, uname="root"),
        entry("etc/.wh.old", b"", mode=0o600, mtime=BUILD_TIME, uname="root"),
        entry("etc/.wh.gone.d", kind=tarfile.LNKTYPE, link="etc/.wh.old", mode=0o600),
        entry("etc/.wh.never-there", b"", mode=0o600, mtime=BUILD_TIME),
    )


def containerd_style() -> bytes:
    """The same step as the containerd store's differ writes it: no copy-ups, plain whiteouts."""
    return tar(
        directory("etc", mtime=BUILD_TIME),
        entry("etc/.wh.gone.d", b"", mode=0, mtime=0),
        entry("etc/.wh.old", b"", mode=0, mtime=0),
        entry("etc/passwd", b"root:x:0:0\nhep:x:1000:1000\n", mtime=BUILD_TIME),
        directory("usr", mtime=BUILD_TIME),
        directory("usr/new", mtime=BUILD_TIME),
        entry("usr/new/a", b"linked data\n", mode=0o755, mtime=BUILD_TIME),
        entry("usr/new/z", kind=tarfile.LNKTYPE, link="usr/new/a", mode=0o755),
    )


def test_the_two_stores_differs_give_the_same_canonical_layer() -> None:
    overlay2 = canonical(overlay2_style(), PARENT)
    containerd = canonical(containerd_style(), PARENT)
    assert overlay2 == containerd
    diff_id, data = overlay2
    assert diff_id == f"sha256:{hashlib.sha256(data).hexdigest()}"
    # etc's mtime changed, and only that: what is below says all
    assert names(data) == [
        "etc/.wh.gone.d",
        "etc/.wh.old",
        "etc/passwd",
        "usr",
        "usr/new",
        "usr/new/a",
        "usr/new/z",
    ]


def test_whiteouts_are_empty_files_of_no_one_at_time_zero() -> None:
    got = {m.name: m for m in members(canonical(overlay2_style(), PARENT)[1])}
    for name in ("etc/.wh.old", "etc/.wh.gone.d"):  # the second one was a hardlink
        whiteout = got[name]
        assert whiteout.type == tarfile.REGTYPE
        assert (whiteout.mode, whiteout.uid, whiteout.gid, whiteout.mtime) == (0, 0, 0, 0)
        assert (whiteout.size, whiteout.uname, whiteout.gname, whiteout.pax_headers) == (
            0,
            "",
            "",
            {},
        )


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        # an opaque marker in a directory new in this layer
        (tar(directory("new"), entry("new/.wh..wh..opq", b"")), ["new"]),
        # a whiteout of nothing below
        (tar(directory("etc", mode=0o700), entry("etc/.wh.nothing", b"")), ["etc"]),
        # a copied-up file, identical to the one below but for times newer than the epoch
        (tar(entry("var/lib/touched", b"same bytes\n", mtime=PARENT_TIME)), []),
        # a copied-up directory whose mtime alone changed
        (tar(directory("var/lib", mtime=BUILD_TIME)), []),
    ],
)
def test_what_changes_nothing_is_dropped(change: bytes, kept: list[str]) -> None:
    assert names(canonical(change, PARENT)[1]) == kept


@pytest.mark.parametrize(
    "change",
    [
        tar(entry("var/lib/touched", b"same bytes\n", mtime=PARENT_TIME + 1)),  # mtime only
        tar(entry("var/lib/touched", b"same bytes\n", mode=0o600)),  # mode only
        tar(entry("var/lib/touched", b"SAME bytes\n")),  # content only, same size
        tar(entry("var/lib/touched", b"same bytes\n", pax={"SCHILY.xattr.user.a": "1"})),
        tar(directory("var/lib", mode=0o700)),  # a directory's mode
    ],
)
def test_a_change_in_any_field_but_a_directory_mtime_is_kept(change: bytes) -> None:
    (got,) = members(canonical(change, PARENT)[1])
    (want,) = members(change)
    assert (got.name, got.mode, got.mtime, got.pax_headers) == (
        want.name,
        want.mode,
        want.mtime,
        want.pax_headers,
    )


def test_an_opaque_marker_over_a_directory_below_is_kept_and_hides_it() -> None:
    change = tar(
        directory("etc/gone.d", mtime=BUILD_TIME, mode=0o700),
        entry("etc/gone.d/.wh..wh..opq", b"", mode=0o600, mtime=BUILD_TIME),
        entry("etc/gone.d/a.conf", b"a\n"),  # the same as below, but below is hidden: kept
    )
    got = members(canonical(change, PARENT)[1])
    assert [m.name for m in got] == ["etc/gone.d", "etc/gone.d/.wh..wh..opq", "etc/gone.d/a.conf"]
    assert (got[1].mode, got[1].mtime) == (0, 0)


def test_the_order_is_depth_first_opaque_marker_whiteouts_then_the_rest() -> None:
    change = tar(
        entry("etc/z", b"z"),
        entry("etc/gone.d/b", b"b"),
        entry("etc/.wh.old", b""),
        entry("etc/gone.d/.wh..wh..opq", b""),
        entry("etc/a", b"a"),
        entry("etc-x", b"x"),
        directory("etc/gone.d", mode=0o700),
        entry("etc/.wh.passwd", b""),
        directory("etc", mode=0o700),
    )
    assert names(canonical(change, PARENT)[1]) == [
        "etc",
        "etc/.wh.old",
        "etc/.wh.passwd",
        "etc/a",
        "etc/gone.d",
        "etc/gone.d/.wh..wh..opq",
        "etc/gone.d/b",
        "etc/z",
        "etc-x",
    ]


def test_a_hardlink_group_is_carried_by_its_first_member_in_the_new_order() -> None:
    change = tar(
        entry("lib/z", b"data\n", mode=0o755),
        entry("lib/m", kind=tarfile.LNKTYPE, link="lib/z"),
        entry("lib/b", kind=tarfile.LNKTYPE, link="lib/m"),  # a link to a link
        entry("lib/t", b"data\n", mode=0o755),  # the same bytes, but its own file
    )
    # even members identical to what is below are kept: each is part of the group
    below = tar(entry("lib/m", b"data\n", mode=0o755), entry("lib/z", b"data\n", mode=0o755))
    _, data = canonical(change, below)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        got = archive.getmembers()
        assert [(m.name, m.islnk(), m.linkname) for m in got] == [
            ("lib/b", False, ""),
            ("lib/m", True, "lib/b"),
            ("lib/t", False, ""),
            ("lib/z", True, "lib/b"),
        ]
        assert got[0].mode == got[1].mode == 0o755
        assert archive.extractfile("lib/b").read() == b"data\n"  # type: ignore[union-attr]
        assert archive.extractfile("lib/z").read() == b"data\n"  # type: ignore[union-attr]


def test_devices_and_extended_attributes_stay_and_nothing_else_does() -> None:
    caps = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "comment": "x"}
    device, _ = entry("dev/null", kind=tarfile.CHRTYPE, mode=0o666, uname="root")
    device.devmajor, device.devminor = 1, 3
    change = tar(
        (device, None),
        entry("bin/ping", b"\x7fELF", mode=0o755, pax=caps, uname="root", uid=0),
        entry("home/hep/x", b"x", uid=1000, uname="hep", pax={"atime": "5"}),
    )
    got = {m.name: m for m in members(canonical(change, PARENT)[1])}
    assert (got["dev/null"].type, got["dev/null"].devmajor, got["dev/null"].devminor) == (
        tarfile.CHRTYPE,
        1,
        3,
    )
    assert got["bin/ping"].pax_headers == {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    assert (got["home/hep/x"].uid, got["home/hep/x"].uname, got["home/hep/x"].pax_headers) == (
        1000,
        "",
        {},
    )
    assert all(m.uname == m.gname == "" for m in got.values())
    assert (got["bin/ping"].devmajor, got["bin/ping"].devminor) == (0, 0)


def test_each_new_layer_is_compared_with_the_new_layers_before_it(tmp_path: Path) -> None:
    """A later step's copy-up of a file an earlier step of the build wrote is dropped."""
    first = tar(directory("opt", mtime=BUILD_TIME), entry("opt/tool", b"v1\n", mtime=BUILD_TIME))
    second = tar(
        directory("opt", mtime=BUILD_TIME + 9),
        entry("opt/tool", b"v1\n", mtime=BUILD_TIME + 9),
        entry("opt/.wh.never", b""),
        entry("opt/new", b"n\n", mtime=BUILD_TIME + 9),
    )
    saved = read_saved(saved_archive(tmp_path / "in.tar", [PARENT, first, second], oci=False))
    _, config = rewrite(
        saved, tmp_path / "out.tar", keep=1, epoch=EPOCH, tag="x:1", progress=lambda _: None
    )
    with tarfile.open(tmp_path / "out.tar") as out:
        manifest = json.load(out.extractfile("manifest.json"))  # type: ignore[arg-type]
        last = out.extractfile(manifest[0]["Layers"][2]).read()  # type: ignore[union-attr]
    assert names(last) == ["opt/new"]
    assert json.loads(config)["rootfs"]["diff_ids"][2] == canonical(second, PARENT, first)[0]
