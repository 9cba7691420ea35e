"""Benchmark: a CI pipeline on fresh runners, parents pulled from the registry vs rebuilt.

A three-image user ladder on the bootstrapped debian-base (``bench-ci-base``: python3 and
hdf5-tools from Debian; ``bench-ci-mid``: python3-numpy; ``bench-ci-top``: an environment
variable) is run as a pipeline of three jobs, one per image, each on a "fresh runner": before
each job every bench image is removed from the engine (debian-base, shared, stays: it is the
same on both sides). Side by side in one run, on new content each (a random value in the base):

- **rebuilt** (the design before issue 14): each job runs ``hepml-images build SPEC``, which
  builds the parents it needs, then its own image;
- **pulled**: each job runs ``build SPEC --pull-from REG/cache --push-cache REG/cache`` against
  a loopback registry (Debian's docker-registry, no auth): the parents come from the cache the
  earlier jobs pushed.

Measured per side: the jobs' wall time (what a CI system bills as runner time) and the machine's
CPU time (user + system of every process, from /proc/stat: the engine, the build containers and
our CLI; other load on the machine counts too, so run it on a quiet machine). Then, on paper,
the same two designs for the 19 shipped variants: how many image builds each needs.

Usage: python -m bench.ci_pull
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import docker

from bench.common import env, hepml, loopback_registry, timed
from hepml_images.pipeline import resolve_directory
from hepml_images.spec.load import shipped_dir

SPECS = {
    "bench-ci-base": """\
name: bench-ci-base
extends: debian-base
version: "1.0.0"
env: {{BENCH_RUN: "{run}"}}
components:
  system-packages:
    packages: [python3, hdf5-tools]
""",
    "bench-ci-mid": """\
name: bench-ci-mid
extends: bench-ci-base
version: "1.0.0"
components:
  system-packages:
    packages: [python3-numpy]
""",
    "bench-ci-top": """\
name: bench-ci-top
extends: bench-ci-mid
version: "1.0.0"
env: {{TOP: "1"}}
""",
}


def _cpu_seconds() -> float:
    """User + system CPU time of the whole machine so far (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _remove_bench(client: docker.DockerClient, host: str) -> None:
    """Every bench image: its tags, then what only our repository digests still hold."""

    def ours(ref: str) -> bool:
        return "bench-ci-" in ref or ref.startswith(f"{host}/")

    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if ours(tag):
                client.api.remove_image(tag)
    for image in client.api.images():
        digests = [d.split("@", 1)[0] for d in image.get("RepoDigests") or []]
        if not image.get("RepoTags") and digests and all(ours(d) for d in digests):
            client.api.remove_image(image["Id"], force=True)


def _pipeline(
    client: docker.DockerClient, specs: Path, host: str, cache: str | None
) -> tuple[float, float, list[float]]:
    """Wall time, machine CPU time and per-job wall times of the three jobs on fresh runners."""
    jobs = []
    cpu0 = _cpu_seconds()
    for name in SPECS:
        _remove_bench(client, host)
        options = ["--pull-from", cache, "--push-cache", cache] if cache else []
        jobs.append(timed(hepml("build", str(specs / f"{name}.yaml"), *options)))
    cpu = _cpu_seconds() - cpu0
    _remove_bench(client, host)
    return sum(jobs), cpu, jobs


def on_paper() -> tuple[int, int, int, int]:
    """Jobs, image builds (rebuilt design), image builds and pulls (pulled design): shipped."""
    variants = resolve_directory(shipped_dir()).variants
    depth = {}
    for variant in variants:
        n, parent = 1, variant.parent
        while parent is not None:
            n, parent = n + 1, parent.parent
        depth[variant.key] = n
    jobs = len(variants)
    return jobs, sum(depth.values()), jobs, sum(d - 1 for d in depth.values())


def main() -> None:
    """Both pipelines once each, side by side; then the shipped matrix on paper."""
    timed(hepml("build", "debian-base", "--no-test"))
    client = docker.from_env(timeout=600)
    os.environ.update({k: v for k, v in env().items() if k == "HEPML_CA_BUNDLE"})
    with tempfile.TemporaryDirectory(prefix="hepml-bench-ci-") as tmp:
        root = Path(tmp)
        process, host = loopback_registry(root)
        os.environ["HEPML_IMAGES_STATE"] = str(root / "state")
        try:
            results = {}
            for side in ("rebuilt", "pulled"):
                specs = root / side
                specs.mkdir()
                run = uuid.uuid4().hex[:12]
                for name, text in SPECS.items():
                    (specs / f"{name}.yaml").write_text(text.format(run=run), encoding="utf-8")
                cache = f"{host}/cache" if side == "pulled" else None
                results[side] = _pipeline(client, specs, host, cache)
        finally:
            process.terminate()
            process.wait()
    print("pipeline: bench-ci-base -> bench-ci-mid -> bench-ci-top, one job each, fresh runners")
    for side, (wall, cpu, times) in results.items():
        per_job = ", ".join(f"{s:.1f}" for s in times)
        print(f"{side:>8}: jobs {wall:.1f} s runner time ({per_job}), machine CPU {cpu:.1f} s")
    ratio_wall = results["pulled"][0] / results["rebuilt"][0]
    ratio_cpu = results["pulled"][1] / results["rebuilt"][1]
    print(f"pulled/rebuilt: runner time {ratio_wall:.2f}x, CPU {ratio_cpu:.2f}x")
    jobs, rebuilt, built, pulled = on_paper()
    print(
        f"shipped matrix on paper: {jobs} jobs; rebuilt design {rebuilt} image builds;"
        f" pulled design {built} builds + {pulled} pulls"
    )


if __name__ == "__main__":
    main()
