"""A real OCI registry on the loopback interface, for tests that push and pull.

Debian's ``docker-registry`` (the CNCF distribution registry v2) runs as a subprocess of the test
session, not as a container: no registry image can be pulled on the CI machine. It listens on
``127.0.0.1:<free port>``, which dockerd treats as an insecure (plain HTTP) registry by default,
so ``client.images.push("127.0.0.1:PORT/repo", tag=..., auth_config=registry.auth_config())``
works without configuring the daemon. Storage is a temporary directory; authentication is
htpasswd (bcrypt, the only hash the registry accepts) with a random user and password.

The password is never printed: it is kept out of ``repr``, out of the command lines (``htpasswd``
reads it from stdin) and out of the config file, and travels only in ``auth_config()`` and in the
``Authorization`` header of the API helpers.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pytest
import yaml

from hepml_images.registry import Credentials
from tests.conftest import require_tool

if TYPE_CHECKING:
    from collections.abc import Iterator
    from email.message import Message
    from pathlib import Path

#: Seconds to wait for a started registry to answer ``GET /v2/``.
READY_TIMEOUT_S = 30.0
#: Seconds a stopping registry gets after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
#: Manifest media types asked for: OCI and Docker v2, single images and indexes/lists.
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
#: Lines of the registry log shown when it does not come up.
LOG_TAIL_LINES = 40

# The registry is on the loopback interface: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


class _Server:
    """The registry process: mutable state behind the frozen ``Registry``."""

    def __init__(self, executable: str, config: Path, log: Path, url: str) -> None:
        self.executable = executable
        self.config = config
        self.log = log
        self.url = url
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running():
            return
        self.stop()  # reap a process that died on its own, close its log
        # REGISTRY_* variables would override the generated config.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [self.executable, "serve", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Wait for ``GET /v2/`` to answer 401 (up, and asking for credentials)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                self.stop()
                pytest.fail(
                    f"docker-registry exited with {code} while starting; log {self.log}:\n"
                    f"{_log_tail(self.log)}",
                    pytrace=False,
                )
            try:
                with _OPENER.open(f"{self.url}/v2/", timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError):
                status = None
            if status == 401:
                return
            if status is not None:
                self.stop()
                pytest.fail(
                    f"GET {self.url}/v2/ answered {status}, not 401: not our registry, or "
                    f"without authentication; log {self.log}:\n{_log_tail(self.log)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"docker-registry did not answer {self.url}/v2/ within "
                    f"{READY_TIMEOUT_S:.0f} s; log {self.log}:\n{_log_tail(self.log)}",
                    pytrace=False,
                )
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


@dataclass(frozen=True)
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``, the name to tag images with."""

    host: str
    username: str
    password: str = field(repr=False)
    root: Path
    log: Path
    _server: _Server = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str) -> str:
        """``127.0.0.1:PORT/REPO:TAG``."""
        return f"{self.host}/{repo}:{tag}"

    def running(self) -> bool:
        return self._server.running()

    def stop(self) -> None:
        """Stop the registry (SIGTERM, SIGKILL after a while); the storage stays."""
        self._server.stop()

    def start(self) -> None:
        """Start it again: same port, same storage, same credentials (no-op when running)."""
        self._server.start()

    def credentials(self) -> Credentials:
        """Credentials for hepml-images' registry clients (ORAS, manifests)."""
        return Credentials(self.username, self.password)

    def auth_config(self) -> dict[str, str]:
        """Credentials for the docker SDK (``push``/``pull`` ``auth_config=``)."""
        return {"username": self.username, "password": self.password, "serveraddress": self.host}

    def _get(self, path: str, accept: tuple[str, ...] = ()) -> tuple[Message, bytes]:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        if accept:
            headers["Accept"] = ", ".join(accept)
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)  # noqa: S310
        with _OPENER.open(request, timeout=30) as response:
            return response.headers, response.read()

    def _get_list(self, path: str, key: str) -> list[str]:
        """All pages of a list answer: ``Link: <NEXT>; rel="next"`` names the next page."""
        items: list[str] = []
        next_path: str | None = path
        while next_path is not None:
            headers, body = self._get(next_path)
            items.extend(json.loads(body)[key] or [])
            link = headers.get("Link", "")
            next_path = link[1 : link.index(">")] if 'rel="next"' in link else None
        return items

    def catalog(self) -> list[str]:
        """The repositories in the registry."""
        return self._get_list("/v2/_catalog", "repositories")

    def tags(self, repo: str) -> list[str]:
        """The tags of REPO; empty when the registry does not know it."""
        try:
            return self._get_list(f"/v2/{repo}/tags/list", "tags")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def manifest(self, repo: str, ref: str) -> tuple[str, dict[str, Any]]:
        """``(digest, manifest)`` of REPO at REF (a tag or a digest)."""
        headers, body = self._get(f"/v2/{repo}/manifests/{ref}", MANIFEST_TYPES)
        digest = headers["Docker-Content-Digest"]
        if not digest:
            raise AssertionError(f"no Docker-Content-Digest for {repo}:{ref}")
        manifest: dict[str, Any] = json.loads(body)
        return str(digest), manifest


def _htpasswd_line(htpasswd: str, username: str, password: str) -> bytes:
    """``USER:BCRYPT`` from ``htpasswd -B -n -i``: the password goes on stdin, not in argv."""
    done = subprocess.run(
        [htpasswd, "-B", "-n", "-i", username],
        input=password.encode(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        pytest.fail(f"htpasswd failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    line = done.stdout.strip()
    if not line.startswith(f"{username}:$2".encode()):
        pytest.fail("htpasswd did not write a bcrypt entry")
    return line + b"\n"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of our own on 127.0.0.1, with htpasswd auth, for the whole session."""
    executable = require_tool("docker-registry")
    htpasswd = require_tool("htpasswd")
    root = tmp_path_factory.mktemp("registry")
    username = f"hepml-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    users = root / "htpasswd"
    users.write_bytes(_htpasswd_line(htpasswd, username, password))
    host = f"127.0.0.1:{_free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": host,
            # fixed, so that uploads survive a stop()/start()
            "secret": secrets.token_hex(16),
        },
        "auth": {"htpasswd": {"realm": "hepml-test", "path": str(users)}},
    }
    config_path = root / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = root / "registry.log"
    server = _Server(executable, config_path, log, f"http://{host}")
    server.start()
    try:
        yield Registry(host, username, password, root, log, server)
    finally:
        server.stop()
