"""Benchmark: cold build of a 4-variant matrix that shares its parent, against separate builds.

`hepml-images build` builds the shared parent once and the four variants on top of it, two at a
time. The obvious alternative is one hand-written Dockerfile per variant, each repeating the
parent's steps, built one after the other with `docker build --no-cache`. Both start from the
same bootstrapped Debian base (already built, not timed) and both run cold: the bench images
and their layer cache are removed before each side runs. Target (issue 3): at most 0.5x.

Usage: python -m bench.matrix_cold
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import docker

from bench.common import HOST_CA, hepml, timed
from hepml_images.build.ca import CaServer, bridge_gateway, read_bundle
from hepml_images.engine import connect
from hepml_images.outputs import write_build_dir
from hepml_images.pipeline import resolve_specs
from hepml_images.render import render

TOOLS = """\
name: bench-tools
extends: debian-base
description: the shared parent, a typical layer of distribution packages
version: "1.0.0"
components:
  system-packages:
    packages: [python3, hdf5-tools]
"""
MATRIX = """\
name: bench-matrix
extends: bench-tools
description: four variants on the shared parent
version: "1.0.0"
matrix:
  flavor: [a, b, c, d]
components:
  system-packages:
    packages: [jq]
env:
  FLAVOR: ${{ matrix.flavor }}
"""


def _remove(prefixes: tuple[str, ...]) -> None:
    client = docker.from_env(timeout=600)
    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefixes):
                client.api.remove_image(tag, force=True)


def main() -> None:
    """Time both cold builds once each and print the ratio."""
    timed(hepml("build", "debian-base", "--no-test"))
    with tempfile.TemporaryDirectory(prefix="hepml-bench-") as tmp:
        specs = Path(tmp) / "specs"
        specs.mkdir()
        (specs / "bench-tools.yaml").write_text(TOOLS, encoding="utf-8")
        (specs / "bench-matrix.yaml").write_text(MATRIX, encoding="utf-8")
        matrix = specs / "bench-matrix.yaml"
        _remove(("hepml/bench-", "bench-flat:"))
        ours = timed(hepml("build", str(matrix), "--no-test", "-j", "2"))
        _remove(("hepml/bench-", "bench-flat:"))

        variants = resolve_specs([str(matrix)]).selected
        bundle = read_bundle(HOST_CA) if HOST_CA.exists() else None
        ca_args: list[str] = []
        server = None
        if bundle is not None:
            server = CaServer(bundle, bridge_gateway(connect())).__enter__()
            ca_args = ["--build-arg", f"HEPML_CA_URL={server.url}"]
        separate = 0.0
        for variant in variants:
            parent = variant.parent
            assert parent is not None  # noqa: S101
            flat = dataclasses.replace(
                variant.plan,
                base=parent.plan.base,
                steps=(*parent.plan.steps, *variant.plan.steps),
            )
            target = Path(tmp) / f"flat-{variant.slug}"
            write_build_dir(render(flat, ca_bundle=bundle is not None), target, "docker")
            separate += timed(
                [
                    "docker",
                    "build",
                    "--no-cache",
                    "-q",
                    *ca_args,
                    "-t",
                    f"bench-flat:{variant.slug}",
                    str(target),
                ]
            )
        if server is not None:
            server.close()
        _remove(("bench-flat:",))
    print(f"variants: {len(variants)} sharing one parent (bench-tools) on debian-base")
    print(f"hepml-images build -j 2, cold: {ours:.1f} s")
    print(
        f"docker build --no-cache of 4 flattened Dockerfiles, one after another: {separate:.1f} s"
    )
    print(f"ratio hepml/separate: {ours / separate:.3f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
