"""Benchmark: the SIF of the same image from the containerd image store and from overlay2.

The image (default: the default environment, built and tested on the main engine first) is
copied into an engine with the containerd image store (``docker save | docker load``; give its
``DOCKER_HOST`` as ``--containerd``, e.g. the second engine of the integration tests,
``unix:///run/hepml-ctd/docker.sock``), then ``hepml-images sif IMAGE --allow-untested`` makes
its SIF from each engine, alternating, ``--rounds`` times. The containerd store's ``docker
save`` writes an OCI layout with gzip-compressed blobs that the SIF maker decompresses as they
stream; overlay2's writes plain layer tars. Prints the medians and the ratio containerd/overlay2;
whether the two SIF files are the same bytes is printed too.

Usage: python -m bench.sif_stores --containerd unix:///run/hepml-ctd/docker.sock [--rounds N]
       [IMAGE]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import env, hepml, timed
from hepml_images.pipeline import DEFAULT_SELECTION, DEFAULT_SPECS, resolve_specs


def _sif(image: str, out: Path, docker_host: str | None) -> float:
    environment = env()
    if docker_host is None:
        environment.pop("DOCKER_HOST", None)
    else:
        environment["DOCKER_HOST"] = docker_host
    start = time.perf_counter()
    done = subprocess.run(
        hepml("sif", image, "-o", str(out), "--allow-untested", "--no-test"),
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sif of {image} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    """Copy the image across, time both SIFs, print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", nargs="?")
    parser.add_argument("--containerd", required=True, help="DOCKER_HOST of that engine")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image = args.image
    if image is None:
        timed(hepml("build"))
        image = resolve_specs(list(DEFAULT_SPECS), list(DEFAULT_SELECTION)).selected[0].content_ref
    main_env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    saved = subprocess.run(["docker", "save", image], env=main_env, capture_output=True, check=True)
    subprocess.run(
        ["docker", "load"],
        input=saved.stdout,
        env={**main_env, "DOCKER_HOST": args.containerd},
        capture_output=True,
        check=True,
    )
    times: dict[str, list[float]] = {"overlay2": [], "containerd": []}
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hepml-bench-stores-", dir=Path.cwd()) as tmp:
        for _ in range(args.rounds):
            for store, host in (("overlay2", None), ("containerd", args.containerd)):
                out = Path(tmp) / f"{store}.sif"
                times[store].append(_sif(image, out, host))
                digests[store] = hashlib.sha256(out.read_bytes()).hexdigest()
                out.unlink()
                print(f"{store:10} {times[store][-1]:6.1f} s", flush=True)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"SIF of {image}: overlay2 {median['overlay2']:.1f} s,"
        f" containerd {median['containerd']:.1f} s (median of {args.rounds})"
    )
    print(f"ratio containerd/overlay2: {median['containerd'] / median['overlay2']:.2f}x")
    same = digests["overlay2"] == digests["containerd"]
    print(f"same SIF file from both stores: {same}")


if __name__ == "__main__":
    main()
