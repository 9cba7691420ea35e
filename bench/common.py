"""Shared helpers of the engine benchmarks: run our CLI, time commands, serve the CA bundle."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

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


def loopback_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's docker-registry on a free 127.0.0.1 port, no auth, storage under ``root``.

    dockerd treats 127.0.0.0/8 as an insecure (plain HTTP) registry by default. The caller
    terminates the process.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": host},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    executable = shutil.which("docker-registry")
    if executable is None:
        raise SystemExit("docker-registry is not installed (scripts/setup-host.sh)")
    process = subprocess.Popen(
        [executable, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = ("127.0.0.1", int(host.rsplit(":", 1)[1]))
    for _ in range(100):
        if _answers(address):
            return process, host
        time.sleep(0.1)
    raise SystemExit("the registry did not start")


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False
