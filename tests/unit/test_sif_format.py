"""The SIF writer and reader, checked against themselves and against the reference ``siftool``."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pytest

from hepml_images.sif import format as sif
from tests.conftest import require_tool

if TYPE_CHECKING:
    from pathlib import Path

SIF_ID = uuid.UUID("6f1c3c36-3d0e-4b9a-9a43-2b8c1f0e7d21")
OTHER_ID = uuid.UUID("0a9d2e4b-77c1-4f5e-8e0d-5b3a1c9f6e42")
CREATED = 1704067200  # 2024-01-01T00:00:00Z
DEFFILE = b"Bootstrap: docker\nFrom: python:3.12-slim\n\n%post\n    pip install torch\n"
LABELS = json.dumps({"org.opencontainers.image.title": "hepml"}, sort_keys=True).encode()

# where the reference puts things in a new image with 48 descriptor slots
DATA_OFFSET = 4096 + 48 * 585


@pytest.fixture
def squashfs(tmp_path: Path) -> Path:
    """A small real squashfs image, made the way Apptainer makes one (as root, fixed times)."""
    mksquashfs = require_tool("mksquashfs")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('ID="hepml"\n', encoding="utf-8")
    (root / "opt" / "app").mkdir(parents=True)
    (root / "opt" / "app" / "run.py").write_text("print('hello')\n", encoding="utf-8")
    (root / "opt" / "app" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    image = tmp_path / "rootfs.sqfs"
    subprocess.run(
        [
            mksquashfs,
            str(root),
            str(image),
            "-noappend",
            "-all-root",
            "-no-progress",
            "-quiet",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    return image


def _objects(squashfs: Path) -> list[sif.SifObject]:
    return [
        sif.SifObject(data_type=sif.DataType.DEFFILE, source=DEFFILE),
        sif.SifObject(data_type=sif.DataType.LABELS, source=LABELS),
        sif.SifObject(
            data_type=sif.DataType.PARTITION,
            source=squashfs,
            partition=sif.PartitionInfo(
                fs_type=sif.FsType.SQUASHFS, part_type=sif.PartType.PRIMSYS, arch="amd64"
            ),
        ),
    ]


def _write(squashfs: Path, sif_id: uuid.UUID = SIF_ID) -> bytes:
    buffer = io.BytesIO()
    sif.write_sif(buffer, _objects(squashfs), sif_id=sif_id, created=CREATED)
    return buffer.getvalue()


def _siftool(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("siftool"), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "TZ": "UTC"},
        timeout=30,
    )


def _fields(text: str) -> dict[str, str]:
    """``Key:   value`` lines of siftool's output as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


# --- round trip ------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path, squashfs: Path) -> None:
    image = tmp_path / "image.sif"
    sif.write_sif(image, _objects(squashfs), sif_id=SIF_ID, created=CREATED)
    info = sif.read_sif(image)

    assert info.launch_script == sif.APPTAINER_LAUNCH_SCRIPT
    assert info.version == "01"
    assert (info.arch, info.arch_code) == ("amd64", "02")
    assert info.id == SIF_ID
    assert info.created == info.modified == CREATED
    assert (info.descriptors_total, info.descriptors_free) == (48, 45)
    assert (info.descriptors_offset, info.descriptors_size) == (4096, 48 * 585)
    assert info.data_offset == DATA_OFFSET
    assert info.data_offset + info.data_size == image.stat().st_size

    deffile, labels, partition = info.descriptors
    assert [d.id for d in info.descriptors] == [1, 2, 3]
    assert [d.data_type for d in info.descriptors] == [
        sif.DataType.DEFFILE,
        sif.DataType.LABELS,
        sif.DataType.PARTITION,
    ]
    for descriptor in info.descriptors:
        assert (descriptor.group_id, descriptor.link_id, descriptor.link_is_group) == (1, 0, False)
        assert descriptor.created == descriptor.modified == CREATED
        assert descriptor.name == ""
    assert (deffile.offset, deffile.size) == (DATA_OFFSET, len(DEFFILE))
    assert (labels.offset, labels.size) == (DATA_OFFSET + len(DEFFILE), len(LABELS))
    assert deffile.partition is None
    assert labels.partition is None
    # partitions start on a 4096-byte boundary; the gap counts in the padded size
    assert partition.offset % 4096 == 0
    assert partition.offset == -(-(labels.offset + labels.size) // 4096) * 4096
    assert partition.size == squashfs.stat().st_size
    assert partition.size_with_padding == partition.offset - labels.offset - labels.size + (
        partition.size
    )
    assert partition.partition == sif.PartitionInfo(
        fs_type=sif.FsType.SQUASHFS, part_type=sif.PartType.PRIMSYS, arch="amd64"
    )
    assert sif.primary_partition(info) == partition

    for descriptor, expected in [
        (deffile, DEFFILE),
        (labels, LABELS),
        (partition, squashfs.read_bytes()),
    ]:
        out = io.BytesIO()
        assert sif.copy_object(image, descriptor, out) == len(expected)
        assert out.getvalue() == expected

    # a file object reads the same as a path, wherever it stands
    with image.open("rb") as stream:
        stream.seek(100)
        assert sif.read_sif(stream) == info


def test_partition_is_streamed_in_chunks(
    tmp_path: Path, squashfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _write(squashfs)
    monkeypatch.setattr(sif, "_CHUNK_SIZE", 1000)
    writes: list[int] = []

    class Recorder(io.BytesIO):
        def seekable(self) -> bool:
            return False  # the writer must not need to seek

        def write(self, data: object) -> int:
            assert isinstance(data, bytes)
            writes.append(len(data))
            return super().write(data)

    target = Recorder()
    sif.write_sif(target, _objects(squashfs), sif_id=SIF_ID, created=CREATED)
    assert target.getvalue() == whole
    assert max(writes) <= 1000
    image = tmp_path / "image.sif"
    image.write_bytes(whole)
    info = sif.read_sif(image)
    out = Recorder()
    writes.clear()
    sif.copy_object(image, sif.primary_partition(info), out)
    assert out.getvalue() == squashfs.read_bytes()
    assert max(writes) <= 1000
    assert len(writes) > 1


# --- determinism -----------------------------------------------------------------------------


def test_same_inputs_give_the_same_bytes(squashfs: Path) -> None:
    assert _write(squashfs) == _write(squashfs)


def test_another_id_changes_only_the_id(squashfs: Path) -> None:
    first, second = _write(squashfs, SIF_ID), _write(squashfs, OTHER_ID)
    assert len(first) == len(second)
    differing = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert differing
    assert all(48 <= i < 64 for i in differing)  # the 16 bytes of the ID in the header
    assert first[48:64] == SIF_ID.bytes
    assert second[48:64] == OTHER_ID.bytes


# --- the reference tool as oracle ------------------------------------------------------------


def test_siftool_reads_the_image(tmp_path: Path, squashfs: Path) -> None:
    image = tmp_path / "image.sif"
    sif.write_sif(image, _objects(squashfs), sif_id=SIF_ID, created=CREATED)
    when = datetime.fromtimestamp(CREATED, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")

    header = _fields(_siftool("header", str(image)).stdout.decode())
    assert header["ID"] == str(SIF_ID)
    assert header["Created At"] == when
    assert header["Modified At"] == when
    assert header["Version"] == "01"
    assert header["Primary Architecture"] == "amd64"
    assert header["Descriptors Free"] == "45"
    assert header["Descriptors Total"] == "48"
    assert header["Data Offset"] == str(DATA_OFFSET)

    rows = [
        [cell.strip() for cell in line.split("|")]
        for line in _siftool("list", str(image)).stdout.decode().splitlines()
        if line[:1].isdigit()
    ]
    info = sif.read_sif(image)
    assert rows == [
        [
            str(d.id),
            "1",
            "NONE",
            f"{d.offset}-{d.offset + d.size}",
            kind,
        ]
        for d, kind in zip(
            info.descriptors,
            ["Def.FILE", "JSON.Labels", "FS (Squashfs/*System/amd64)"],
            strict=True,
        )
    ]

    partition = _fields(_siftool("info", "3", str(image)).stdout.decode())
    assert partition["Data Type"] == "FS"
    assert partition["Group ID"] == "1"
    assert partition["Filesystem Type"] == "Squashfs"
    assert partition["Partition Type"] == "*System"  # siftool's word for the primary partition
    assert partition["Architecture"] == "amd64"
    assert partition["Size"] == str(squashfs.stat().st_size)
    assert partition["Created At"] == when
    assert _fields(_siftool("info", "1", str(image)).stdout.decode())["Data Type"] == "Def.FILE"
    assert _fields(_siftool("info", "2", str(image)).stdout.decode())["Data Type"] == "JSON.Labels"

    assert _siftool("dump", "3", str(image)).stdout == squashfs.read_bytes()
    assert _siftool("dump", "1", str(image)).stdout == DEFFILE
    assert _siftool("dump", "2", str(image)).stdout == LABELS


def test_same_bytes_as_siftool_apart_from_times(tmp_path: Path, squashfs: Path) -> None:
    """``siftool new`` + ``add`` build an image with the Go library; ours must match it exactly.

    siftool takes the wall clock and writes no launch script; the times are set to ours before
    comparing, and ours is written without a launch script.
    """
    reference = tmp_path / "reference.sif"
    deffile = tmp_path / "recipe.def"
    deffile.write_bytes(DEFFILE)
    labels = tmp_path / "labels.json"
    labels.write_bytes(LABELS)
    _siftool("new", str(reference))
    _siftool("add", str(reference), str(deffile), "--datatype", "1", "--groupid", "1")
    _siftool("add", str(reference), str(labels), "--datatype", "3", "--groupid", "1")
    _siftool(
        "add",
        str(reference),
        str(squashfs),
        *("--datatype", "4", "--parttype", "2", "--partfs", "1", "--partarch", "2"),
        *("--groupid", "1"),
    )
    expected = bytearray(reference.read_bytes())
    struct.pack_into("<qq", expected, 64, CREATED, CREATED)
    for slot in range(3):
        struct.pack_into("<qq", expected, 4096 + slot * 585 + 41, CREATED, CREATED)
    reference_id = sif.read_sif(reference).id

    buffer = io.BytesIO()
    sif.write_sif(
        buffer, _objects(squashfs), sif_id=reference_id, created=CREATED, launch_script=""
    )
    assert buffer.getvalue() == bytes(expected)


# --- errors ----------------------------------------------------------------------------------


def test_a_file_that_is_not_sif_is_refused(tmp_path: Path, squashfs: Path) -> None:
    with pytest.raises(sif.SifError, match="not a SIF image"):
        sif.read_sif(squashfs)
    with pytest.raises(sif.SifError, match="not a SIF image"):
        sif.read_sif(io.BytesIO(b"#!/bin/sh\n"))
    empty = tmp_path / "empty.sif"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a SIF image"):
        sif.read_sif(empty)


def test_a_cut_short_image_is_refused(squashfs: Path) -> None:
    whole = _write(squashfs)
    with pytest.raises(sif.SifError, match="descriptor table"):
        sif.read_sif(io.BytesIO(whole[:5000]))
    cut = io.BytesIO(whole[:-10])
    info = sif.read_sif(cut)
    with pytest.raises(sif.SifError, match="10 bytes before the end of object 3"):
        sif.copy_object(cut, sif.primary_partition(info), io.BytesIO())


def test_another_version_is_refused(squashfs: Path) -> None:
    image = bytearray(_write(squashfs))
    image[42:44] = b"02"
    with pytest.raises(sif.SifError, match="version '02' is not supported"):
        sif.read_sif(io.BytesIO(bytes(image)))


def test_arch_codes() -> None:
    assert sif.arch_code("386") == "01"
    assert sif.arch_code("amd64") == "02"
    assert sif.arch_code("arm") == "03"
    assert sif.arch_code("arm64") == "04"
    assert sif.arch_code("ppc64le") == "06"
    assert sif.arch_code("s390x") == "11"
    assert sif.arch_code("riscv64") == "12"
    assert sif.arch_name("04") == "arm64"
    assert sif.arch_name("00") is None


def test_partition_arch_as_name_or_code(squashfs: Path) -> None:
    as_code = _objects(squashfs)
    as_code[2] = sif.SifObject(
        data_type=sif.DataType.PARTITION,
        source=squashfs,
        partition=sif.PartitionInfo(fs_type=sif.FsType.SQUASH, arch=sif.arch_code("amd64")),
    )
    buffer = io.BytesIO()
    sif.write_sif(buffer, as_code, sif_id=SIF_ID, created=CREATED)
    assert buffer.getvalue() == _write(squashfs)
    assert sif.FsType["SQUASHFS"] is sif.FsType.SQUASH


def test_an_unknown_arch_is_refused(squashfs: Path) -> None:
    with pytest.raises(ValueError, match=r"'x86_64' has no SIF code \(did you mean 'amd64'\?\)"):
        sif.arch_code("x86_64")
    with pytest.raises(ValueError, match="'sparc64' has no SIF code; known architectures: 386"):
        sif.arch_code("sparc64")
    partition = sif.SifObject(
        data_type=sif.DataType.PARTITION,
        source=squashfs,
        partition=sif.PartitionInfo(arch="sparc64"),
    )
    target = io.BytesIO()
    with pytest.raises(sif.SifError, match="sparc64"):
        sif.write_sif(target, [partition], sif_id=SIF_ID, created=CREATED)
    assert target.getvalue() == b""  # refused before anything is written


def test_inputs_that_cannot_make_an_image(tmp_path: Path, squashfs: Path) -> None:
    primary = _objects(squashfs)[2]
    cases: list[tuple[list[sif.SifObject], str]] = [
        ([primary, primary], "at most one primary partition"),
        (
            [sif.SifObject(data_type=sif.DataType.PARTITION, source=b"x")],
            "needs partition info",
        ),
        (
            [
                sif.SifObject(
                    data_type=sif.DataType.LABELS,
                    source=b"{}",
                    partition=sif.PartitionInfo(arch="amd64"),
                )
            ],
            "only partition objects",
        ),
        ([sif.SifObject(data_type=sif.DataType.LABELS, source=b"", name="n" * 129)], "128 bytes"),
        ([sif.SifObject(data_type=sif.DataType.LABELS, source=b"", link_id=2)], "linked object"),
        ([sif.SifObject(data_type=sif.DataType.LABELS, source=b"", group_id=0)], "group ID"),
        (
            [sif.SifObject(data_type=sif.DataType.LABELS, source=tmp_path / "missing.json")],
            "cannot read the data",
        ),
    ]
    for objects, message in cases:
        with pytest.raises(sif.SifError, match=message):
            sif.write_sif(io.BytesIO(), objects, sif_id=SIF_ID, created=CREATED)
    too_many = [sif.SifObject(data_type=sif.DataType.GENERIC, source=b"")] * 3
    with pytest.raises(sif.SifError, match="3 objects do not fit in 2 descriptors"):
        sif.write_sif(io.BytesIO(), too_many, sif_id=SIF_ID, created=CREATED, descriptor_capacity=2)
    image = tmp_path / "image.sif"
    with pytest.raises(sif.SifError, match="launch script"):
        sif.write_sif(image, [], sif_id=SIF_ID, created=CREATED, launch_script="#" * 32)
    assert not image.exists()


def test_no_primary_partition(tmp_path: Path) -> None:
    image = tmp_path / "image.sif"
    sif.write_sif(
        image,
        [sif.SifObject(data_type=sif.DataType.DEFFILE, source=DEFFILE)],
        sif_id=SIF_ID,
        created=CREATED,
    )
    info = sif.read_sif(image)
    assert info.arch is None
    assert info.arch_code == "00"
    with pytest.raises(sif.SifError, match="no primary system partition \\(object 1: deffile\\)"):
        sif.primary_partition(info)
