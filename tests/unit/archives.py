"""Tar archives the unit tests write: image archives, and the layouts inside them."""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    """A tar at ``path`` of regular files, named and filled as ``files`` says, in that order."""
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
