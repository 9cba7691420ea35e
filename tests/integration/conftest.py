"""Fixtures for integration tests: the real Docker Engine of this machine.

``docker_client`` is a connected client; without an engine the test is skipped locally and fails
under ``CI=true``, like a missing tool (``tests.conftest.require_tool``).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import in_ci, require_tool
from tests.integration.containerd import containerd_engine
from tests.integration.helpers import DEFAULT_SIF, run
from tests.integration.registry import registry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import docker

#: the fixtures of tests/integration/registry.py and containerd.py, for every test here
__all__ = ["containerd_engine", "registry"]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the engine named by DOCKER_HOST (default: the local socket), shared."""
    import docker
    import docker.errors

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):  # the SDK leaks its socket when this connect fails
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(host.removeprefix("unix://"))
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        message = f"no Docker Engine answers: {exc}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing engine is a failure)")
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def default_sif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """``build --sif`` of the default environment: (state dir, SIF file, the JSON report).

    Made once per session: test_sif checks it on the engine, test_apptainer with Apptainer.
    """
    require_tool("mksquashfs")
    require_tool("sqfs2tar")
    base = tmp_path_factory.mktemp("default-sif")
    state, out = base / "state", base / "out"
    built = run(state, "build", "--sif", "--sif-dir", str(out), "--json")
    assert built.code == 0, built.stderr[-4000:]
    return state, out / DEFAULT_SIF, built.json()
