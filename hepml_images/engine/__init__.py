"""The container engine interface: the only layer that talks to Docker.

Everything else speaks to an ``Engine``: inspect, tag, remove, load and save images, build one
from a Dockerfile context (through a build backend), run a check container, push a tag, pull
an image, read a
directory out of an image, and the facts ``doctor`` reports. ``connect()`` gives the Docker
Engine named by ``DOCKER_HOST`` (``hepml_images.engine.dockerapi``, the Docker SDK over the
Engine API); a second build backend (BuildKit through ``docker buildx``) is a new class behind
``Engine.build``, not a branch in the modules that build.

What crosses this interface is plain data (``Image``, ``RunResult``, ``BuildRequest``) and the
error tree's classes: no SDK object or exception leaves the engine layer. A test fails when a
module outside ``hepml_images/engine`` imports ``docker``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from hepml_images.errors import Cancelled, HepmlError

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from hepml_images.engine.buildkit import Backend

#: Where CDI specs live when the engine does not say (the CDI specification's defaults).
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
#: The CDI kind NVIDIA's toolkit writes (``nvidia-ctk cdi generate``).
NVIDIA_CDI_KIND = "nvidia.com/gpu"
#: Generous: a daemon under a parallel build can be slow to answer a single request.
API_TIMEOUT_S = 600
#: Labels every image built by hepml-images carries (set by the rendered Dockerfile).
DIGEST_LABEL = "io.hepml.digest"
DEFAULT_HOST = "unix:///var/run/docker.sock"


class EngineError(HepmlError):
    """The engine refused or failed a request.

    ``status`` is the HTTP status of the Engine API's answer when there was one; ``transport``
    says the connection itself failed (the engine or the registry behind it was unreachable).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transport: bool = False,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.transport = transport


@dataclass(frozen=True, kw_only=True)
class Image:
    """What the engine knows of one image.

    Two identities, and which one means what in hepml-images:

    - ``id``, "the image ID" everywhere in hepml-images, is the engine's own ID of the image,
      what ``docker images`` shows: the configuration's digest on graph-driver stores
      (overlay2 …), the manifest's digest on the containerd image store (Docker Engine 29's and
      Docker Desktop's default). It is always read from the engine, never computed by us (a
      loaded archive's config digest is not its ID on the containerd store), and it is the key
      of the smoke-test result store and of the publish gate: a result holds for exactly the
      image the engine names so.
    - ``config_digest`` is the content identity that is the same in both stores (the digest of
      the image configuration, which names the layers' diff IDs), for comparing images across
      stores and rebuilds. On graph-driver stores it is ``id``; on the containerd store the
      engine says it only for some images (the ``config.digest`` annotation of the manifest's
      descriptor, which BuildKit builds carry; classic builds and loaded archives do not), and
      it is None where the engine does not say.
    """

    id: str
    tags: tuple[str, ...] = ()
    #: ``REPOSITORY@sha256:…`` of the registries it was pushed to or pulled from
    digests: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the image configuration's ``config`` (Env, Cmd, Entrypoint, Labels, WorkingDir …)
    config: Mapping[str, Any] = field(default_factory=dict)
    #: the diff IDs of its layers, bottom first
    layers: tuple[str, ...] = ()
    size: int = 0
    architecture: str | None = None
    created: str | None = None
    #: the image configuration's digest, where the engine says it (see the class docstring)
    config_digest: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """How a check container ended."""

    code: int
    output: str
    timed_out: bool


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One Dockerfile build: the context (a tar holding ``Dockerfile``) and its settings."""

    context: bytes
    tag: str
    no_cache: bool = False
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the backend that builds it (``engine.buildkit.choose``); None: the classic builder
    backend: Backend | None = None


@dataclass
class Activity:
    """What one build has running, so that a cancel from another thread can stop it."""

    cancel: threading.Event
    lock: threading.Lock = field(default_factory=threading.Lock)
    containers: set[str] = field(default_factory=set)
    process: subprocess.Popen[bytes] | None = None

    def stop(self, engine: Engine) -> None:
        """Kill what is running; the build then fails fast and cleans up after itself."""
        with self.lock:
            containers = list(self.containers)
            process = self.process
        for container in containers:
            engine.kill(container)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

    def check(self) -> None:
        """Raise ``Cancelled`` once a cancel was asked for."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")


class Engine(Protocol):
    """A container engine (see the module docstring); methods raise ``EngineError``."""

    #: where it is, for messages (``unix:///var/run/docker.sock``)
    where: str

    def close(self) -> None:
        """Release the connection."""

    def version(self) -> Mapping[str, Any]:
        """The engine's version document (``Version``, ``ApiVersion`` …)."""

    def info(self) -> Mapping[str, Any]:
        """The engine's system information (``Runtimes``, ``Driver`` …)."""

    def image(self, reference: str) -> Image | None:
        """The image a reference or ID names; None when there is none."""

    def tag(self, image_id: str, reference: str) -> None:
        """Point ``REPOSITORY:TAG`` at the image (moving it if it pointed elsewhere)."""

    def remove_image(self, reference: str, *, force: bool = False) -> None:
        """Remove an image or a tag of it."""

    def load(self, archive: Path) -> None:
        """Load a ``docker save`` archive."""

    def save(self, image_id: str) -> Iterator[bytes]:
        """The image as a ``docker save`` archive, streamed."""

    def build(
        self,
        request: BuildRequest,
        *,
        log: IO[str],
        progress: Callable[[str], None],
        activity: Activity,
    ) -> str:
        """Build a Dockerfile context; the image ID. Leaves no container or intermediate image.

        Raises ``BuildError`` (it failed, the message says why) or ``Cancelled``.
        """

    def relabel(self, image_id: str, labels: Mapping[str, str], reference: str) -> str:
        """The image with ``labels`` added to its configuration (no new layer), tagged."""

    def run(
        self,
        image_id: str,
        argv: Sequence[str],
        *,
        gpu: bool,
        timeout_s: int,
        labels: Mapping[str, str],
    ) -> RunResult:
        """Run a command in a fresh container without network; the container is removed."""

    def kill(self, container: str) -> None:
        """Kill a running container (no error when it has already ended)."""

    def files(self, image_id: str, directory: str) -> bytes | None:
        """A tar of ``directory`` in the image (without running it); None when it is absent."""

    def push(self, repository: str, tag: str, auth: Mapping[str, str] | None) -> str:
        """Push ``REPOSITORY:TAG``; the manifest digest the registry stored."""

    def pull(self, reference: str, auth: Mapping[str, str] | None) -> str:
        """Pull ``REPOSITORY:TAG`` or ``REPOSITORY@sha256:…``; the ID of the image it gave."""

    def gateway(self) -> str | None:
        """The address build containers reach the host at (the default bridge's gateway)."""


def cdi_specs(directories: Sequence[str], kind: str = NVIDIA_CDI_KIND) -> tuple[str, ...]:
    """The CDI spec files in ``directories`` that declare devices of ``kind``."""
    found = []
    for directory in directories:
        base = Path(directory)
        if not base.is_dir():
            continue
        for spec in sorted(base.iterdir()):
            if spec.suffix not in {".yaml", ".yml", ".json"} or not spec.is_file():
                continue
            try:
                text = spec.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if kind in text:
                found.append(str(spec))
    return tuple(found)


def gpu_request(info: Mapping[str, Any], local_specs: Sequence[str]) -> str:
    """How to ask this engine for every GPU: ``cdi`` where it can, else the ``gpu`` capability.

    CDI (``nvidia.com/gpu=all``) works on Docker Engine ≥ 28.2 and Podman ≥ 5.5 where a CDI
    spec for NVIDIA GPUs exists; Podman's Docker-compatible API ignores the capability form.
    The engine says it does CDI by naming its spec directories (``CDISpecDirs``); the devices
    are there when it lists them (``DiscoveredDevices``, API ≥ 1.50) or, for a local engine,
    when one of those directories holds an NVIDIA spec.
    """
    dirs = info.get("CDISpecDirs")
    if not isinstance(dirs, list) or not dirs:
        return "gpu"
    discovered = info.get("DiscoveredDevices")
    if isinstance(discovered, list) and any(
        isinstance(d, dict) and str(d.get("ID", "")).startswith(NVIDIA_CDI_KIND) for d in discovered
    ):
        return "cdi"
    return "cdi" if local_specs else "gpu"


def image_store(info: Mapping[str, Any]) -> str:
    """Which image store the engine uses: ``containerd`` (snapshotters) or its graph driver."""
    for pair in info.get("DriverStatus") or []:
        if (
            isinstance(pair, list | tuple)
            and len(pair) == 2  # noqa: PLR2004 - (key, value)
            and pair[0] == "driver-type"
            and "containerd.snapshotter" in str(pair[1])
        ):
            return "containerd"
    return str(info.get("Driver") or "unknown")


def flavour(version: Mapping[str, Any]) -> str:
    """``Docker Engine`` or ``Podman`` (which answers the Docker API too)."""
    names = [str(c.get("Name", "")) for c in version.get("Components") or [] if isinstance(c, dict)]
    platform = str((version.get("Platform") or {}).get("Name", ""))
    if any("podman" in n.lower() for n in names) or "podman" in platform.lower():
        return "Podman"
    return "Docker Engine"


def connect(timeout: int = API_TIMEOUT_S) -> Engine:
    """The Docker Engine named by DOCKER_HOST (default: the local socket), checked."""
    from hepml_images.engine.dockerapi import DockerEngine  # noqa: PLC0415 - the SDK is heavy

    return DockerEngine.connect(timeout)


def query(timeout: int) -> tuple[Mapping[str, Any], Mapping[str, Any]] | str:
    """``(version, info)`` of the engine at DOCKER_HOST, or why it does not answer (doctor)."""
    from hepml_images.engine.dockerapi import query_engine  # noqa: PLC0415 - the SDK is heavy

    return query_engine(timeout)
