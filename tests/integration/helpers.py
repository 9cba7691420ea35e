"""Running the real command line against the real engine, and looking at what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

    from tests.integration.registry import Registry

#: The host's CA bundle: on the CI machine PyPI is only reachable from containers with it.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Run:
    """A finished command-line run."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Stdout as JSON (a failure shows stderr, which says why there is none)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(
                f"exit {self.code}, no JSON on stdout; stderr:\n{self.stderr[-4000:]}"
            ) from None


def cli_env(state: Path) -> dict[str, str]:
    """The environment for a CLI run: its own state dir, the host CA bundle when there is one."""
    env = {**os.environ, "HEPML_IMAGES_STATE": str(state), "COLUMNS": "200"}
    if HOST_CA.exists():
        env["HEPML_CA_BUNDLE"] = str(HOST_CA)
    return env


#: The default environment's SIF, as ``build --sif`` names it.
DEFAULT_SIF = "debian-tensorflow-cpu.sif"


def run(state: Path, *args: str, registry: Registry | None = None, epoch: str | None = None) -> Run:
    """The CLI; SOURCE_DATE_EPOCH only where asked (builds with it would rebuild every image)."""
    env = cli_env(state)
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    if registry is not None:
        env["HEPML_REGISTRY_USER"] = registry.username
        env["HEPML_REGISTRY_PASSWORD"] = registry.password
    done = subprocess.run(
        [sys.executable, "-m", "hepml_images", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def cli(state: Path, *args: str, timeout: int = 1800, docker_host: str | None = None) -> Run:
    """Run ``hepml-images ARGS`` in a subprocess (as a user would) and wait for it."""
    env = cli_env(state)
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    done = subprocess.run(
        [sys.executable, "-m", "hepml_images", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def leftovers(client: docker.DockerClient) -> tuple[set[str], set[str]]:
    """IDs of all containers (running or stopped) and of dangling images."""
    containers = {c["Id"] for c in client.api.containers(all=True)}
    dangling = {i["Id"] for i in client.api.images(filters={"dangling": True})}
    return containers, dangling


def by_key(builds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Build results of ``build --json`` keyed by ``spec:variant``."""
    return {f"{b['spec']}:{b['variant']}": b for b in builds}


def buildkit_here() -> bool:
    """Whether ``build --builder auto`` uses BuildKit on this machine (buildx and the engine)."""
    from hepml_images.engine import buildkit, connect, flavour

    engine = connect()
    try:
        version = engine.version()
        return buildkit.choose("auto", version, flavour(version)).name == "buildkit"
    finally:
        engine.close()
