"""Compare two images layer by layer and file by file (hepml_images.layerdiff on the command line).

Each side is a ``docker save`` archive, or an image reference that is saved first with the
engine at ``DOCKER_HOST``. Prints, per layer, whether the diff IDs are equal and, where not, every
path that differs and which of its fields (content hash, mode, owner, mtime, link, PAX records).
Exit status 0 when every layer is identical, 1 otherwise.

Usage: python -m bench.layerdiff IMAGE_OR_TAR_A IMAGE_OR_TAR_B [--all-fields]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from hepml_images import layerdiff


def _layers(ref: str, tmp: Path) -> list[layerdiff.Layer]:
    path = Path(ref)
    if not path.is_file():
        path = tmp / f"{abs(hash(ref))}.tar"
        subprocess.run(["docker", "save", "-o", str(path), ref], check=True)
    return layerdiff.read_saved_image(path)


def _describe(entry: layerdiff.Entry | None, names: tuple[str, ...]) -> str:
    if entry is None:
        return "-"
    return " ".join(f"{n}={getattr(entry, n)}" for n in names if n != "pax") + (
        f" pax={dict(entry.pax)}" if "pax" in names else ""
    )


def main(argv: list[str]) -> int:
    """Print the comparison of two images; 0 when they are identical."""
    if len(argv) < 2:  # noqa: PLR2004 - two images
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory(prefix="hepml-layerdiff-") as tmp:
        a = _layers(argv[0], Path(tmp))
        b = _layers(argv[1], Path(tmp))
    same = True
    for layer in layerdiff.compare_images(a, b):
        if layer.identical:
            print(f"layer {layer.index}: identical {layer.diff_id_a}")
            continue
        same = False
        print(f"layer {layer.index}: {layer.diff_id_a} != {layer.diff_id_b}")
        left = a[layer.index] if layer.index < len(a) else None
        right = b[layer.index] if layer.index < len(b) else None
        for diff in layer.differences:
            print(f"  {diff.what:8} {diff.path}  {' '.join(diff.fields)}")
            if diff.fields and left is not None and right is not None:
                names = diff.fields if "--all-fields" not in argv else layerdiff.COMPARED
                print(f"           a: {_describe(left.entries.get(diff.path), names)}")
                print(f"           b: {_describe(right.entries.get(diff.path), names)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
