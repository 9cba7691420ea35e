"""Benchmark: a no-op rebuild of the Debian ladder, against `docker build` with a warm cache.

When everything is up to date, `hepml-images build` checks each variant's content digest
against the image already there and builds nothing. The obvious alternative is to run
`docker build` on each variant's rendered Dockerfile, in order, and let the layer cache answer
every step. Both are run on the same, already built images, with the same build arguments, so
every docker step is a cache hit. Target (issue 3): at most 0.2x the docker time.

Usage: python bench/noop_rebuild.py [--with-cuda]   (builds what is missing first, untimed)
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import HOST_CA, env, hepml, timed
from hepml_images import ir
from hepml_images.build.ca import CaServer, bridge_gateway, read_bundle
from hepml_images.build.images import bootstrap_argv
from hepml_images.engine import connect
from hepml_images.outputs import write_build_dir
from hepml_images.pipeline import DEFAULT_EPOCH, resolve_specs
from hepml_images.render import render
from hepml_images.resolve import lineage

RUNS = 3


def main() -> None:
    """Build what is missing, then time both no-op rebuilds."""
    selection = [] if "--with-cuda" in sys.argv else ["accelerator=cpu"]
    resolution = resolve_specs(["debian-tensorflow"], selection)
    args = ["build", "debian-tensorflow", "--no-test"]
    args += [f"--variant={s}" for s in selection]
    timed(hepml(*args))  # make sure everything is built
    variants = list(dict.fromkeys(v for s in resolution.selected for v in lineage(s)))
    bundle = read_bundle(HOST_CA) if HOST_CA.exists() else None
    with tempfile.TemporaryDirectory(prefix="hepml-bench-") as tmp:
        dirs = []
        for variant in variants:
            target = Path(tmp) / f"{variant.spec}-{variant.slug}"
            target.mkdir()
            plan = variant.plan
            if isinstance(plan.base, ir.FromParent):
                # a docker user builds FROM their own build of the parent
                base = dataclasses.replace(
                    plan.base, ref=_docker_tag(plan.base.spec, plan.base.slug)
                )
                plan = dataclasses.replace(plan, base=base)
            write_build_dir(render(plan, ca_bundle=bundle is not None), target, "docker")
            if isinstance(variant.plan.base, ir.FromBootstrap):
                # the rootfs tarball a docker user keeps around (made once, untimed)
                argv = bootstrap_argv(variant.plan.base, target / variant.plan.base.rootfs)
                subprocess.run(
                    argv,
                    check=True,
                    capture_output=True,
                    env={**env(), "SOURCE_DATE_EPOCH": str(DEFAULT_EPOCH)},
                )
            dirs.append((variant, target))
        ca_args: list[str] = []
        server = None
        if bundle is not None:
            server = CaServer(bundle, bridge_gateway(connect())).__enter__()
            ca_args = ["--build-arg", f"HEPML_CA_URL={server.url}"]
        docker_times = []
        ours = []
        for run in range(RUNS + 1):  # the first docker pass fills its cache: not counted
            total = 0.0
            for variant, target in dirs:
                tag = _docker_tag(variant.spec, variant.slug)
                total += timed(["docker", "build", "-q", *ca_args, "-t", tag, str(target)])
            if run:
                docker_times.append(total)
                ours.append(timed(hepml(*args)))
        if server is not None:
            server.close()
    d, o = statistics.median(docker_times), statistics.median(ours)
    print(f"variants: {len(variants)} ({', '.join(v.key for v in variants)})")
    print(f"docker build, warm cache, in order: median {d:.2f} s  (runs: {_fmt(docker_times)})")
    print(f"hepml-images build, all up to date: median {o:.2f} s  (runs: {_fmt(ours)})")
    print(f"ratio hepml/docker: {o / d:.3f}x (target <= 0.2x)")


def _docker_tag(spec: str, slug: str) -> str:
    return f"bench-docker/{spec}:{slug}"


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
