"""Benchmark: a no-op rebuild of the Debian ladder, against `docker build` with a warm cache.

When everything is up to date, `hepml-images build` (no arguments: the default environment,
debian-base → debian-hdf5 → debian-python → debian-tensorflow cpu, smoke-tested) checks each
image's content tag and smoke-test result and builds nothing: through the no-op path
(``hepml_images.noop``) when the specs are unchanged since the last build, through the full path
(``HEPML_NOOP=0``) otherwise. The obvious alternative is to run `docker build` (BuildKit, the
engine's own builder) on each variant's rendered Dockerfile, in order, and let the layer cache
answer every step. All three are run on the same, already built images, with the same build
arguments, so every docker step is a cache hit. Target (issue 4): the no-op path at most 0.5x
the docker time; goal 0.2x.

Usage: python -m bench.noop_rebuild   (builds and tests what is missing first, untimed)
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
from hepml_images.pipeline import DEFAULT_EPOCH, DEFAULT_SELECTION, DEFAULT_SPECS, resolve_specs
from hepml_images.render import render
from hepml_images.resolve import lineage

RUNS = 5
#: docker's builder: BuildKit (``docker build`` is ``docker buildx build`` with buildx installed)
BUILDKIT = {"DOCKER_BUILDKIT": "1"}


def main() -> None:
    """Build and test what is missing, then time the no-op rebuilds side by side."""
    resolution = resolve_specs(list(DEFAULT_SPECS), list(DEFAULT_SELECTION))
    timed(hepml("build"))  # make sure everything is built and tested, and recorded
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
        docker_times: list[float] = []
        fast: list[float] = []
        full: list[float] = []
        for run in range(RUNS + 1):  # the first docker pass fills its cache: not counted
            total = 0.0
            for variant, target in dirs:
                tag = _docker_tag(variant.spec, variant.slug)
                argv = ["docker", "build", "-q", *ca_args, "-t", tag, str(target)]
                total += timed(argv, extra_env=BUILDKIT)
            if run:
                docker_times.append(total)
                fast.append(timed(hepml("build")))
                full.append(timed(hepml("build"), extra_env={"HEPML_NOOP": "0"}))
        if server is not None:
            server.close()
    taken = subprocess.run(
        hepml("build"),
        env={**env(), "HEPML_NOOP": "explain"},
        capture_output=True,
        text=True,
        check=True,
    ).stderr.splitlines()[0]
    d, o, f = (statistics.median(x) for x in (docker_times, fast, full))
    print(f"variants: {len(variants)} ({', '.join(v.key for v in variants)})")
    print(
        f"docker build (BuildKit), warm cache, in order: median {d:.3f} s  ({_fmt(docker_times)})"
    )
    print(f"hepml-images build, no-op path: median {o:.3f} s  ({_fmt(fast)}; {taken})")
    print(f"hepml-images build, full path (HEPML_NOOP=0): median {f:.3f} s  ({_fmt(full)})")
    print(f"ratio no-op path / docker: {o / d:.3f}x (target <= 0.5x, goal 0.2x)")
    print(f"ratio full path / docker: {f / d:.3f}x")
    print(f"python: {sys.version.split()[0]}")


def _docker_tag(spec: str, slug: str) -> str:
    return f"bench-docker/{spec}:{slug}"


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    main()
