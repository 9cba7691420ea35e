"""A second Docker Engine with the containerd image store, for tests of that store.

The containerd image store is Docker Engine 29's and Docker Desktop's default: image IDs are
manifest digests and ``docker save`` writes OCI layouts with compressed blobs. The machine's main
engine uses overlay2, so the ``containerd_engine`` fixture gives the ``DOCKER_HOST`` of a second
dockerd with ``"features": {"containerd-snapshotter": true}``, on its own socket, data root,
exec root and bridge (``hepml0``, 172.29.0.0/16, NAT by the rules below), with its own managed
containerd:

- one already answering at ``/run/hepml-ctd/docker.sock`` is used as it is (and left running);
- otherwise it is started here, as root (bridge, iptables rules and daemon.json only made when
  missing, so starting again is harmless) and stopped at the end of the session. The bridge and
  the iptables rules stay: they are inert without the daemon and the next start reuses them.

Where it cannot be started (not root, no dockerd), the test is skipped with the reason, and fails
under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import in_ci, require_tool

if TYPE_CHECKING:
    from collections.abc import Iterator

EXEC_ROOT = Path("/run/hepml-ctd")
SOCKET = EXEC_ROOT / "docker.sock"
HOST = f"unix://{SOCKET}"
CONFIG = Path("/etc/hepml-ctd/daemon.json")
DATA_ROOT = Path("/var/lib/hepml-ctd")
LOG = Path("/var/log/hepml-ctd.log")
BRIDGE = "hepml0"
GATEWAY = "172.29.0.1/16"
SUBNET = "172.29.0.0/16"
DAEMON_CONFIG = {
    "features": {"containerd-snapshotter": True},
    "bridge": BRIDGE,
    "iptables": False,
    "ip6tables": False,
}
#: iptables rules (table, chain, rule, how to add): NAT and forwarding for the bridge.
RULES = (
    ("nat", "POSTROUTING", ["-s", SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE"], "-A"),
    ("filter", "FORWARD", ["-i", BRIDGE, "-j", "ACCEPT"], "-I"),
    ("filter", "FORWARD", ["-o", BRIDGE, "-j", "ACCEPT"], "-I"),
)
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def answers(host: str = HOST) -> str | None:
    """None when the engine at ``host`` answers with the containerd store, else why not."""
    import docker
    import docker.errors

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(host.removeprefix("unix://"))
        client = docker.DockerClient(base_url=host, timeout=30)
    except (docker.errors.DockerException, OSError) as exc:
        return f"{host}: {exc}"
    try:
        info = client.info()
    except (docker.errors.DockerException, OSError) as exc:
        return f"{host}: {exc}"
    finally:
        client.close()
    if ["driver-type", "io.containerd.snapshotter.v1"] not in (info.get("DriverStatus") or []):
        return f"{host} answers but does not use the containerd image store"
    return None


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _network() -> None:
    """The bridge and the NAT/forward rules, each added only when missing."""
    if _sh("ip", "link", "show", BRIDGE).returncode != 0:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if GATEWAY.partition("/")[0] not in _sh("ip", "-4", "addr", "show", "dev", BRIDGE).stdout:
        _sh("ip", "addr", "add", GATEWAY, "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    for table, chain, rule, how in RULES:
        if _sh("iptables", "-t", table, "-C", chain, *rule).returncode != 0:
            done = _sh("iptables", "-t", table, how, chain, *rule)
            if done.returncode != 0:
                raise RuntimeError(f"iptables {table} {chain}: {done.stderr.strip()}")


def start() -> subprocess.Popen[bytes]:
    """Start the second dockerd as the module docstring says; return its process once it answers."""
    dockerd = require_tool("dockerd")
    require_tool("iptables")
    require_tool("ip")
    _network()
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    if not CONFIG.exists() or json.loads(CONFIG.read_text(encoding="utf-8")) != DAEMON_CONFIG:
        CONFIG.write_text(json.dumps(DAEMON_CONFIG) + "\n", encoding="utf-8")
    EXEC_ROOT.mkdir(parents=True, exist_ok=True)
    argv = [
        dockerd,
        "--config-file",
        str(CONFIG),
        "--data-root",
        str(DATA_ROOT),
        "--exec-root",
        str(EXEC_ROOT),
        "--pidfile",
        str(EXEC_ROOT / "dockerd.pid"),
        "-H",
        HOST,
    ]
    with LOG.open("ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    reason = answers()
    while reason is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            tail = LOG.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise RuntimeError(f"dockerd did not come up ({reason}):\n" + "\n".join(tail))
        time.sleep(1)
        reason = answers()
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a dockerd this session started (its own managed containerd goes with it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def containerd_engine() -> Iterator[str]:
    """The ``DOCKER_HOST`` of an engine with the containerd image store (module docstring)."""
    if answers() is None:
        yield HOST
        return
    problem = None
    process = None
    if os.geteuid() != 0:
        problem = "starting the containerd-store dockerd needs root"
    else:
        try:
            process = start()
        except (RuntimeError, OSError) as exc:
            problem = f"the containerd-store dockerd could not be started: {exc}"
    if process is None:
        message = problem or "no containerd-store engine"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing engine is a failure)")
        pytest.skip(message)
    try:
        yield HOST
    finally:
        stop(process)
