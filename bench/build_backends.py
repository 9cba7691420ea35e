"""Benchmark: cold build of the default ladder with the BuildKit backend against the classic one.

Both sides run ``hepml-images build --no-cache --no-test`` of the default environment
(bootstrap → HDF5 → Python 3 with h5py built from source → TensorFlow CPU) on the same engine,
one after the other, differing only in ``--builder``. ``--no-cache`` makes both cold: the base
is bootstrapped again and no layer cache is used. Downloads (Debian packages, wheels) come from
the network on both sides. Prints both times and the ratio BuildKit / classic.

Usage: python -m bench.build_backends [--rounds N]
"""

from __future__ import annotations

import argparse

from bench.common import hepml, timed


def main() -> None:
    """Run the two sides ``--rounds`` times, alternating, and print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {"classic": [], "buildkit": []}
    for _ in range(rounds):
        for backend in ("classic", "buildkit"):
            seconds = timed(hepml("build", "--builder", backend, "--no-cache", "--no-test"))
            times[backend].append(seconds)
            print(f"{backend:8} {seconds:7.1f} s")
    classic = sorted(times["classic"])[len(times["classic"]) // 2]
    buildkit = sorted(times["buildkit"])[len(times["buildkit"]) // 2]
    print(f"cold default ladder: classic {classic:.1f} s, BuildKit {buildkit:.1f} s")
    print(f"ratio BuildKit/classic: {buildkit / classic:.2f}x")


if __name__ == "__main__":
    main()
