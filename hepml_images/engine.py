"""The Docker Engine connection: one place that knows how to reach it and what failing means."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from hepml_images.errors import EngineUnavailable

if TYPE_CHECKING:
    import docker

#: Generous: a daemon under a parallel build can be slow to answer a single request.
API_TIMEOUT_S = 600
#: Labels every image built by hepml-images carries (set by the rendered Dockerfile).
DIGEST_LABEL = "io.hepml.digest"


def connect(timeout: int = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked."""
    import docker  # noqa: PLC0415 - heavy import, only for commands that talk to the engine
    from docker.errors import DockerException  # noqa: PLC0415

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if where.startswith("unix://"):  # the SDK leaks its socket when this connect fails
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(where.removeprefix("unix://"))
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (DockerException, OSError) as exc:
        reason = (
            exc.strerror or str(exc)
            if isinstance(exc, OSError)
            else str(exc).split("(", 1)[0].strip() or type(exc).__name__
        )
        raise EngineUnavailable(
            f"the Docker Engine at {where} does not answer: {reason}",
            hint=(
                "start it (as root: `dockerd &` or `systemctl start docker`; `make setup` does"
                " this on Debian), or join the docker group, or set DOCKER_HOST;"
                " `hepml-images doctor` checks the machine"
            ),
        ) from None
    return client
