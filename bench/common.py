"""Shared helpers of the engine benchmarks: run our CLI, time commands, serve the CA bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: On the reference machine PyPI is only reachable from containers with the host bundle.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def env() -> dict[str, str]:
    """The environment for our CLI and for docker: the CA bundle when the host has one."""
    out = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder, like the SDK's
    if HOST_CA.exists():
        out.setdefault("HEPML_CA_BUNDLE", str(HOST_CA))
    return out


def timed(
    argv: list[str], *, cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> float:
    """Wall time of a command that must succeed (its output is discarded)."""
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(argv[:6])} …")
    return seconds


def hepml(*args: str) -> list[str]:
    """Argv of our command line."""
    return [sys.executable, "-m", "hepml_images", *args]
