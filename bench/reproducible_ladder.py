"""Benchmark (slow): the whole default ladder from scratch twice, and whether it is the same.

The default environment (bootstrap → HDF5 → Python 3 with h5py built from source → TensorFlow
CPU) is built twice, one run after the other, with the same epoch and locks, each time from an
engine emptied of the ladder's images and of its build cache, and with a new result store:
``hepml-images build debian-base debian-hdf5 debian-python debian-tensorflow -V accelerator=cpu
--no-cache --push --registry REG/<run>`` (smoke tests included, so that the images may be
published), against a loopback registry (Debian's docker-registry, no auth).

Printed per image: the image ID and the manifest digest in the registry from both runs, and
whether they are identical, and a digest over its diff IDs (to compare two engines' runs: the
image IDs differ between the stores, the layers should not); the wall time of each run.
``--verify`` then removes the local copy of the TensorFlow image and runs ``hepml-images
verify`` on the published one by its registry reference (pull, rebuild from what it carries
with no cache, compare) and prints its verdict and wall time next to the build's.
Exits 1 when an image differs or verify fails.

Mind the engine: this removes the ladder's images (``hepml/debian-{base,hdf5,python,
tensorflow}``) and prunes the build cache of the engine it runs on (``DOCKER_HOST``; the
containerd-store engine of tests/integration/containerd.py is a good choice).

Usage: python -m bench.reproducible_ladder [--verify]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from bench.common import env, hepml, loopback_registry

LADDER = (
    "debian-base:default",
    "debian-hdf5:default",
    "debian-python:default",
    "debian-tensorflow:cpu",
)
REPOSITORIES = {f"hepml/{key.split(':')[0]}" for key in LADDER}
BUILD = ("build", *(key.split(":")[0] for key in LADDER), "--variant", "accelerator=cpu")


def _empty(client: docker.DockerClient, host: str) -> None:
    """Remove the ladder's images and the registry copies, then the engine's build cache."""

    def ours(ref: str) -> bool:
        return ref.rsplit(":", 1)[0] in REPOSITORIES or ref.startswith(f"{host}/")

    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if ours(tag):
                client.api.remove_image(tag, force=True)
    for image in client.api.images():
        digests = [d.split("@", 1)[0] for d in image.get("RepoDigests") or []]
        if not image.get("RepoTags") and digests and all(ours(d) for d in digests):
            client.api.remove_image(image["Id"], force=True)
    client.api.prune_builds(all=True)


def _run(cli_env: dict[str, str], registry: str) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    done = subprocess.run(
        # every image of the ladder named, so that each is published, not only the top one
        hepml(*BUILD, "--no-cache", "--push", "--registry", registry, "--json"),
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def _results(report: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Per ladder image: (image ID, manifest digest, the reference of its first tag)."""
    builds = {f"{b['spec']}:{b['variant']}": b for b in report["builds"]}
    pushed = {f"{p['spec']}:{p['variant']}": p for p in report.get("publish", [])}
    out = {}
    for key in LADDER:
        if builds[key]["state"] != "built":
            raise SystemExit(f"{key} was not built from scratch: {builds[key]['state']}")
        publication = pushed.get(key)
        if publication is None or publication["error"]:
            raise SystemExit(f"{key} was not published: {publication}")
        ref = f"{publication['repository']}:{publication['tags'][0]['tag']}"
        out[key] = (str(builds[key]["image_id"]), str(publication["manifest"]), ref)
    return out


def _verdict(done: subprocess.CompletedProcess[str]) -> str:
    """``identical``, or the differing layers and their first paths, or the error."""
    try:
        verdict = json.loads(done.stdout)
    except json.JSONDecodeError:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    if verdict["identical"]:
        return "identical"
    layers = [layer for layer in verdict["layers"] if not layer["identical"]]
    paths = [d["path"] for layer in layers for d in layer["differences"]]
    fields = ", ".join(verdict["config_fields"])
    return f"{len(layers)} layers differ ({', '.join(paths[:5])}); configuration: {fields}"


def main() -> None:
    """Two cold runs, compared image by image; then verify the published TensorFlow image."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verify", action="store_true")
    verify = parser.parse_args().verify
    client = docker.from_env(timeout=900)
    with tempfile.TemporaryDirectory(prefix="hepml-bench-repro-") as tmp:
        root = Path(tmp)
        process, host = loopback_registry(root)
        try:
            runs = []
            for name in ("one", "two"):
                _empty(client, host)
                cli_env = {**env(), "HEPML_IMAGES_STATE": str(root / f"state-{name}")}
                report, seconds = _run(cli_env, f"{host}/{name}")
                runs.append((_results(report), seconds))
            (first, t1), (second, t2) = runs
            differ = False
            print(f"engine: {os.environ.get('DOCKER_HOST', 'the default')}")
            for key in LADDER:
                same_id = first[key][0] == second[key][0]
                same_manifest = first[key][1] == second[key][1]
                differ = differ or not (same_id and same_manifest)
                verdict = "identical" if same_id and same_manifest else "DIFFERENT"
                # one digest over the diff IDs: equal on two engines when the layers are
                layers = client.api.inspect_image(second[key][0])["RootFS"]["Layers"]
                over = hashlib.sha256(" ".join(layers).encode()).hexdigest()[:12]
                print(
                    f"{key:24} id {first[key][0][7:19]} {second[key][0][7:19]}"
                    f"  manifest {first[key][1][7:19]} {second[key][1][7:19]}  {verdict}"
                    f"  layers {len(layers)} {over}"
                )
            print(f"cold ladder with smoke tests and push: {t1:.0f} s, again {t2:.0f} s")
            failed = False
            if verify:
                ref = second[LADDER[-1]][2]
                # only in the registry, as a grid site or a reviewer would find it; its
                # parents stay (verify rebuilds FROM the parent its labels name)
                for tag in client.api.inspect_image(second[LADDER[-1]][0])["RepoTags"]:
                    client.api.remove_image(tag, force=True)
                start = time.perf_counter()
                done = subprocess.run(
                    hepml("verify", ref, "--json"),
                    env={**env(), "HEPML_IMAGES_STATE": str(root / "state-verify")},
                    capture_output=True,
                    text=True,
                    check=False,
                )
                seconds = time.perf_counter() - start
                failed = done.returncode != 0
                print(f"verify {ref}: exit {done.returncode}, {_verdict(done)} ({seconds:.0f} s)")
                print(f"verify / the run that built it: {seconds / t2:.2f}x")
        finally:
            process.terminate()
            process.wait()
            _empty(client, host)
    if differ or failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
