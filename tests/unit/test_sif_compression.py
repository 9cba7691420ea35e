"""``sif --compression``: gzip by default (every Apptainer and SingularityCE), zstd on request."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import pytest

from hepml_images.sif import make
from tests.conftest import require_tool

if TYPE_CHECKING:
    from pathlib import Path

#: squashfs superblock compression IDs (squashfs_fs.h)
GZIP, ZSTD = 1, 6


def compressor(path: Path) -> int:
    """The compression ID in a squashfs superblock (bytes 20-21, little endian)."""
    return int(struct.unpack_from("<H", path.read_bytes(), 20)[0])


@pytest.mark.parametrize(("compression", "expected"), [("gzip", GZIP), ("zstd", ZSTD)])
def test_the_squashfs_uses_the_compressor_asked_for(
    tmp_path: Path, compression: make.Compression, expected: int
) -> None:
    require_tool("mksquashfs")
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_text("x" * 10000, encoding="utf-8")
    target = tmp_path / "out.sqfs"
    make.squash(
        root,
        target,
        epoch=1700000000,
        all_root=True,
        progress=lambda *_: None,
        compression=compression,
    )
    assert target.read_bytes()[:4] == b"hsqs"
    assert compressor(target) == expected
