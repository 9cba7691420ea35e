"""Benchmark: making the SIF of the default environment against the two obvious hand-made ways.

- ours: ``hepml-images sif`` (save, flatten the layers, add the Apptainer layout, mksquashfs
  with gzip, write the SIF); a complete, reproducible SIF with its own smoke tests skipped;
- ``docker export | tar2sqfs -c gzip`` (squashfs-tools-ng): a bare squashfs of a container's
  files, Docker's init layer included, no /.singularity.d, no SIF around it;
- plain mksquashfs of the extracted tree: ``docker export | tar -x`` then ``mksquashfs``;
- Apptainer's own ``apptainer build SIF docker-daemon:IMAGE`` (real Apptainer 1.4 from
  ``hepml_images.devtools.apptainer``, its image made once and cached; ``--apptainer`` only,
  because making that image needs mmdebstrap and a minute).

Each is run once, one after the other, on the same image; times are wall-clock seconds and sizes
are the output files. Ratios are ours / theirs (time and size). Both alternatives use gzip, the
compressor Apptainer uses by default, so sizes compare like with like.

Usage: python -m bench.sif_create [--apptainer]   (builds and tests the default environment first
if needed)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from bench.common import env, hepml, timed
from hepml_images.devtools import apptainer as dev
from hepml_images.engine import connect
from hepml_images.pipeline import DEFAULT_SELECTION, DEFAULT_SPECS, resolve_specs


def _shell(script: str, *args: str) -> float:
    """Wall time of a bash pipeline (``set -o pipefail``); arguments are passed, not pasted."""
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {script}", "bench", *args],
        env=env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"failed: {script}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    """Print time and size of the three ways and the ratios."""
    timed(hepml("build"))
    variant = resolve_specs(list(DEFAULT_SPECS), list(DEFAULT_SELECTION)).selected[0]
    client = docker.from_env(timeout=600)
    image_id = str(client.images.get(variant.content_ref).id)
    container = client.containers.create(image_id, command=["true"])
    work = Path(tempfile.mkdtemp(prefix="hepml-bench-sif-", dir=Path.cwd()))
    try:
        ours_file = work / "ours.sif"
        ours = timed(hepml("sif", "-o", str(ours_file), "--no-test"))
        cid = container.id or ""
        tar2sqfs_file = work / "tar2sqfs.sqfs"
        tar2 = _shell(
            'docker export "$1" | tar2sqfs --quiet --compressor gzip "$2"',
            cid,
            str(tar2sqfs_file),
        )
        tree, plain_file = work / "tree", work / "plain.sqfs"
        tree.mkdir()
        unpack = _shell(
            'docker export "$1" | tar -x -C "$2" --numeric-owner', container.id or "", str(tree)
        )
        squash = _shell(
            'mksquashfs "$1" "$2" -noappend -quiet -no-progress', str(tree), str(plain_file)
        )
        rows = [
            ("hepml-images sif (complete SIF)", ours, ours_file.stat().st_size),
            ("docker export | tar2sqfs -c gzip", tar2, tar2sqfs_file.stat().st_size),
            ("docker export | tar -x; mksquashfs", unpack + squash, plain_file.stat().st_size),
        ]
        shutil.rmtree(tree)
        if "--apptainer" in sys.argv[1:]:
            engine = connect()
            try:
                _, root = dev.install(engine, work / "bin")
            finally:
                engine.close()
            theirs = work / "apptainer.sif"
            source = f"docker-daemon:{variant.content_ref}"
            seconds = timed([str(root), "build", str(theirs), source])
            rows.append((f"{dev.version(root)} build", seconds, theirs.stat().st_size))
    finally:
        container.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"image {variant.content_ref} ({image_id[7:19]})")
    for name, seconds, size in rows:
        print(f"{name:38s} {seconds:7.1f} s  {size / 1e6:8.1f} MB")
    print(f"  (plain mksquashfs: export+extract {unpack:.1f} s, mksquashfs {squash:.1f} s)")
    for name, seconds, size in rows[1:]:
        print(f"ours / {name}: time {ours / seconds:.2f}x, size {rows[0][2] / size:.3f}x")


if __name__ == "__main__":
    main()
