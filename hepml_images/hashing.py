"""SHA-256 digests of files and bytes, read in blocks (never a whole file in memory)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: Bytes read and hashed at a time.
BLOCK = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """``(HEX, size)`` of a file, read ``BLOCK`` bytes at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return file_digest(path)[0]


def sha256_digest(data: bytes) -> str:
    """``sha256:HEX`` of some bytes (the form registries and image configs use)."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
