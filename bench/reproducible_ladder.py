"""Benchmark (slow): the whole default ladder from scratch twice, and whether it is the same.

``hepml-images build --no-cache --no-test`` of the default environment (bootstrap → HDF5 →
Python 3 with h5py built from source → TensorFlow CPU), twice, one after the other, with the
same epoch and locks: prints each image's ID from both runs, whether they are identical, and the
wall time of each run (the canonical rewrite included). ``--verify`` then runs ``hepml-images
verify`` on the TensorFlow image and prints its verdict and time. Exits 1 when an image differs.

Usage: python -m bench.reproducible_ladder [--verify]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import env, hepml

LADDER = (
    "debian-base:default",
    "debian-hdf5:default",
    "debian-python:default",
    "debian-tensorflow:cpu",
)


def _build() -> tuple[dict[str, str], float]:
    start = time.perf_counter()
    done = subprocess.run(
        hepml("build", "--no-cache", "--no-test", "--json"),
        env=env(),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the build failed:\n{done.stderr[-3000:]}")
    builds = {f"{b['spec']}:{b['variant']}": b for b in json.loads(done.stdout)["builds"]}
    return {key: str(builds[key]["image_id"]) for key in LADDER}, seconds


def main() -> None:
    """Two cold builds, compared image by image."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verify", action="store_true")
    verify = parser.parse_args().verify
    first, t1 = _build()
    second, t2 = _build()
    for key in LADDER:
        same = "identical" if first[key] == second[key] else "DIFFERENT"
        print(f"{key:24} {first[key][:19]}  {second[key][:19]}  {same}")
    print(f"cold ladder: {t1:.0f} s, again {t2:.0f} s")
    if verify:
        tensorflow = second[LADDER[-1]]
        start = time.perf_counter()
        done = subprocess.run(
            hepml("verify", tensorflow), env=env(), capture_output=True, text=True, check=False
        )
        lines = done.stdout.strip().splitlines()
        print(
            f"verify {tensorflow[:19]}: exit {done.returncode}, {lines[-1] if lines else ''}"
            f" ({time.perf_counter() - start:.0f} s)"
        )
    if first != second:
        sys.exit(1)


if __name__ == "__main__":
    main()
