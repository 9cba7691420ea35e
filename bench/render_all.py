"""Benchmark: load, resolve and render every shipped spec and variant.

Prints the time for the whole job (best of several runs, in one process after a warm-up) and,
for scale, the time to merely parse the same YAML files with PyYAML's safe loader — the obvious
floor for anything that reads these specs. Target (issue 2): well under one second for all.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import yaml

from hepml_images.pipeline import render_variants, resolve_directory
from hepml_images.render.writers import environment
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from pathlib import Path

RUNS = 20


def _render_all() -> int:
    resolution = resolve_directory(shipped_dir())
    rendered = render_variants(resolution.variants)
    return len(rendered)


def _parse_only(paths: list[Path]) -> int:
    for path in paths:
        yaml.safe_load(path.read_bytes())
    return len(paths)


def _best(function: object, *args: object) -> tuple[float, float, int]:
    times = []
    count = 0
    for _ in range(RUNS):
        start = time.perf_counter()
        count = function(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), count


def main() -> None:
    """Run the benchmark and print its figures."""
    paths = sorted(shipped_dir().glob("*.yaml"))
    environment()  # template compilation happens once per process; measured below separately
    cold_start = time.perf_counter()
    environment.cache_clear()
    _render_all()
    cold = time.perf_counter() - cold_start
    best, median, variants = _best(_render_all)
    parse_best, parse_median, files = _best(_parse_only, paths)
    print(f"specs: {files} files, {variants} variants")
    print(f"render everything (first run, templates compiled): {cold * 1000:.1f} ms")
    print(
        f"render everything: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms ({RUNS} runs)"
    )
    print(
        f"yaml.safe_load of the same files: best {parse_best * 1000:.1f} ms,"
        f" median {parse_median * 1000:.1f} ms"
    )
    print(f"ratio render-all / parse-only (median): {median / parse_median:.1f}x")
    print(f"per variant: {median / variants * 1000:.2f} ms")


if __name__ == "__main__":
    main()
