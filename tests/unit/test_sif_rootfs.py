"""Layers applied in order with OCI whiteouts, from a docker-save archive made here (GNU tar)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from typing import TYPE_CHECKING

import pytest

from hepml_images.sif import rootfs

if TYPE_CHECKING:
    from pathlib import Path

EPOCH = 1_700_000_000


def _layer(entries: list[tuple[str, str, str]]) -> bytes:
    """A layer tar from (name, kind, data): kind file|dir|link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "chardev":
                info.type, info.mode, info.devmajor, info.devminor = tarfile.CHRTYPE, 0o666, 1, 3
                tar.addfile(info)
            else:
                payload = data.encode()
                info.size, info.mode = len(payload), int(kind.removeprefix("file") or "644", 8)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _archive(layers: list[bytes], *, oci: bool = False) -> bytes:
    """A docker-save archive: classic ``<id>/layer.tar`` entries, or OCI ``blobs/sha256/…``."""
    buffer = io.BytesIO()
    config = json.dumps({"architecture": "amd64"}).encode()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        members = [("c.json", config)]
        for index, data in enumerate(reversed(layers)):  # not in image order on purpose
            name = f"blobs/sha256/{_diff(data)[7:]}" if oci else f"l{index}/layer.tar"
            members.append((name, data))
        members.append(("manifest.json", b"[]"))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _diff(layer: bytes) -> str:
    return "sha256:" + hashlib.sha256(layer).hexdigest()


def _flatten(tmp_path: Path, layers: list[bytes], *, oci: bool = False) -> tuple[Path, int]:
    data = _archive(layers, oci=oci)
    chunks = iter([data[i : i + 1000] for i in range(0, len(data), 1000)])
    root, spool = tmp_path / "root", tmp_path / "spool"
    root.mkdir(mode=0o700)
    spool.mkdir()
    seen: list[tuple[str, int, int]] = []
    skipped = rootfs.flatten_stream(
        chunks,
        [_diff(layer) for layer in layers],
        root,
        spool=spool,
        epoch=EPOCH,
        progress=lambda *a: seen.append(a),
        total=len(data),
    )
    unpacked = [s for s in seen if s[0] == "unpack"]
    assert unpacked[-1] == ("unpack", len(layers), len(layers))
    assert list(spool.iterdir()) == []  # every layer file removed once applied
    return root, skipped


def test_whiteouts_opaque_directories_and_type_changes(tmp_path: Path) -> None:
    lower = _layer(
        [
            ("a", "dir", ""),
            ("a/keep", "file", "k"),
            ("a/gone", "file", "g"),
            ("b", "dir", ""),
            ("b/old", "file", "o"),
            ("c", "dir", ""),
            ("c/inside", "file", "i"),
            ("d", "file", "was a file"),
            ("run", "file755", "#!/bin/sh\n"),
            ("link", "link", "a/keep"),
        ]
    )
    upper = _layer(
        [
            ("a", "dir", ""),
            ("a/.wh.gone", "file", ""),
            ("b", "dir", ""),
            ("b/.wh..wh..opq", "file", ""),
            ("b/new", "file", "n"),
            ("c", "file", "now a file"),
            ("d", "dir", ""),
            ("d/x", "file", "x"),
        ]
    )
    root, skipped = _flatten(tmp_path, [lower, upper])
    assert skipped == 0
    assert (root / "a" / "keep").read_text() == "k"
    assert not (root / "a" / "gone").exists()
    assert not (root / "a" / ".wh.gone").exists()
    assert sorted(p.name for p in (root / "b").iterdir()) == ["new"]
    assert (root / "c").read_text() == "now a file"
    assert (root / "d" / "x").read_text() == "x"
    assert (root / "link").readlink().as_posix() == "a/keep"
    assert (root / "run").stat().st_mode & 0o777 == 0o755
    assert (root / "a" / "keep").stat().st_mtime == 1_600_000_000  # the layer's times are kept
    assert root.stat().st_mode & 0o777 == 0o755
    assert root.stat().st_mtime == EPOCH


def test_a_layer_may_not_write_through_a_link_out_of_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = _layer([("escape", "link", str(outside))])
    upper = _layer([("escape/owned", "file", "x")])
    with pytest.raises(rootfs.RootfsError, match="leaves the image"):
        _flatten(tmp_path, [lower, upper])
    assert list(outside.iterdir()) == []


def test_unsafe_member_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(rootfs.RootfsError, match="unsafe path"):
        _flatten(tmp_path, [_layer([("../up", "file", "x")])])


def test_device_nodes_are_left_out_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer([("dev", "dir", ""), ("dev/null", "chardev", ""), ("dev/keep", "file", "k")])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as an unprivileged caller
    root, skipped = _flatten(tmp_path, [layer])
    assert skipped == 1
    assert not (root / "dev" / "null").exists()
    assert (root / "dev" / "keep").read_text() == "k"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make device nodes")
def test_device_nodes_are_kept_as_root(tmp_path: Path) -> None:
    layer = _layer([("dev", "dir", ""), ("dev/null", "chardev", "")])
    root, skipped = _flatten(tmp_path, [layer])
    assert skipped == 0
    assert stat.S_ISCHR((root / "dev" / "null").lstat().st_mode)


def test_the_oci_archive_layout_and_a_missing_layer(tmp_path: Path) -> None:
    first = _layer([("a", "file", "1")])
    second = _layer([("b", "file", "2")])
    root, _ = _flatten(tmp_path, [first, second], oci=True)
    assert (root / "a").read_text() == "1"
    assert (root / "b").read_text() == "2"
    other = tmp_path / "other"
    (other / "root").mkdir(parents=True)
    with pytest.raises(rootfs.RootfsError, match="lacks sha256:"):
        rootfs.flatten_stream(
            iter([_archive([first])]),
            [_diff(first), _diff(second)],
            other / "root",
            spool=other,
            epoch=EPOCH,
            progress=lambda *_: None,
        )


def test_a_directory_the_layer_writes_into_keeps_its_time_from_below(tmp_path: Path) -> None:
    """A canonical layer has no entry for a directory whose only change is its time: writing a
    new file there must not give the directory the time of the unpacking (SIFs would differ)."""
    lower = _layer([("d", "dir", ""), ("d/old", "file", "1"), ("e", "dir", "")])
    upper = _layer([("d/new", "file", "2"), ("e/sub", "dir", ""), ("e/sub/f", "file", "3")])
    root, _ = _flatten(tmp_path, [lower, upper])
    assert (root / "d" / "new").read_text() == "2"
    assert int((root / "d").lstat().st_mtime) == 1_600_000_000
    assert int((root / "e").lstat().st_mtime) == 1_600_000_000
    assert int((root / "e" / "sub").lstat().st_mtime) == 1_600_000_000  # its own entry's
