"""Benchmark (slow): the CUDA variant of the default ladder's TensorFlow image, built and checked.

``debian-tensorflow`` is built in both variants on the same parents (the ladder's Python image,
built first if missing): both TensorFlow images are removed from the engine first and the run
gets a new result store, so both are built and smoke-tested in this run, side by side. GPU checks
are skipped (``--gpu skip``: where there is no GPU they could only fail); the CUDA variant's
non-GPU checks run: TensorFlow imports and is built with CUDA, the CUDA runtime and cuDNN load
with the versions the image is labelled with, the spec's own computation.

Printed: per variant the build time of its own layer, the image size and each smoke check's
status; the CUDA image's ``io.hepml.version.cuda``/``cudnn`` labels next to the versions of the
NVIDIA wheels it has installed (``/.hepml/pip-freeze.txt``); and the CUDA/CPU ratios of time and
size (what the CUDA variant costs over the default environment). Exits 1 when a check fails or
a label disagrees with what is installed.

Usage: python -m bench.cuda_variant
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import docker

from bench.common import env, hepml

SPEC = "debian-tensorflow"
#: NVIDIA wheel → the version label it must agree with (major.minor)
WHEELS = {"nvidia-cuda-runtime-cu12": "cuda", "nvidia-cudnn-cu12": "cudnn"}


def _installed(client: docker.DockerClient, image: str) -> dict[str, str]:
    """The installed versions of the NVIDIA runtime wheels, from the image's pip freeze."""
    freeze = client.containers.run(
        image, ["cat", "/.hepml/pip-freeze.txt"], remove=True, network_disabled=True
    ).decode()
    found = {}
    for line in freeze.splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() in WHEELS:
            found[name.strip().lower()] = version.strip()
    return found


def _build(cli_env: dict[str, str]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    done = subprocess.run(
        hepml("build", SPEC, "--gpu", "skip", "--json"),
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"the build failed ({done.returncode}):\n{done.stderr[-3000:]}") from None
    return report, seconds


def main() -> None:
    """Both variants built and tested in one run; the CUDA one's labels checked."""
    client = docker.from_env(timeout=900)
    for image in client.api.images(name=f"hepml/{SPEC}"):
        for tag in image.get("RepoTags") or []:
            client.api.remove_image(tag, force=True)
    with tempfile.TemporaryDirectory(prefix="hepml-bench-cuda-") as state:
        report, seconds = _build({**env(), "HEPML_IMAGES_STATE": state})
    builds = {b["variant"]: b for b in report["builds"] if b["spec"] == SPEC}
    tests = {t["variant"]: t for t in report.get("tests", []) if t["spec"] == SPEC}
    failed = False
    sizes = {}
    print(f"hepml-images build {SPEC} --gpu skip: {seconds:.0f} s in all")
    for slug in ("cpu", "cuda"):
        build = builds[slug]
        if build["image_id"] is None:
            print(f"{slug}: {build['state']}: {build['reason']}")
            failed = True
            continue
        sizes[slug] = int(client.api.inspect_image(build["image_id"])["Size"])
        print(
            f"{slug:5} {build['state']:8} {build['seconds'] or 0:7.1f} s"
            f"  {sizes[slug] / 1e9:5.2f} GB  {build['image']}"
        )
        for check in tests.get(slug, {}).get("checks", []):
            print(f"      {check['status']:7} {check['name']}")
            failed = failed or check["status"] == "failed"
        failed = failed or not tests.get(slug, {}).get("passed", False)
    cuda = builds["cuda"]
    if cuda["image_id"] is not None:
        labels = client.api.inspect_image(cuda["image_id"])["Config"]["Labels"] or {}
        for wheel, version in sorted(_installed(client, cuda["image_id"]).items()):
            key = WHEELS[wheel]
            label = labels.get(f"io.hepml.version.{key}")
            agrees = label == ".".join(version.split(".")[:2])
            failed = failed or not agrees
            print(
                f"io.hepml.version.{key}={label}  installed {wheel}=={version}"
                f"  {'agrees' if agrees else 'DISAGREES'}"
            )
    if len(sizes) == 2:  # noqa: PLR2004
        time_ratio = (cuda["seconds"] or 0) / max(builds["cpu"]["seconds"] or 0, 1e-9)
        print(f"cuda/cpu: build {time_ratio:.2f}x, size {sizes['cuda'] / sizes['cpu']:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
