"""The Docker Engine through the Docker SDK (the Engine API): the one module that imports it.

``DockerEngine`` implements ``hepml_images.engine.Engine``. Builds go through the classic
builder API (``ClassicBackend``); what is specific to that builder (its text stream, the
intermediate images it leaves when a build fails) stays in that class.

Engine traps handled here: a failed push, pull or load does not raise, the daemon reports the error
inside a successful streamed answer (every chunk is read and ``error`` looked for); the SDK's
Unix transport leaks its socket when the connect fails (the socket is tried first); a build needs
``forcerm`` or a failed step leaves its container behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
from typing import IO, TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import DeviceRequest

from hepml_images.engine import (
    API_TIMEOUT_S,
    DEFAULT_HOST,
    NVIDIA_CDI_KIND,
    EngineError,
    Image,
    RunResult,
    buildkit,
    cdi_specs,
    gpu_request,
)
from hepml_images.errors import BuildError, Cancelled, EngineUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from typing_extensions import Self

    from hepml_images.engine import Activity, BuildRequest

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_RUNNING = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
#: The last status line of a push (``TAG: digest: sha256:… size: N``); with the containerd image
#: store (Engine 28) it is the only place the digest is, there is no ``aux`` chunk.
_PUSHED = re.compile(r"^\S+: digest: (sha256:[0-9a-f]{64}) size: \d+$")
#: Bytes of the image archive read at a time.
_CHUNK = 1 << 20
_OUTPUT_CHARS = 4000


def _host() -> str:
    return os.environ.get("DOCKER_HOST", DEFAULT_HOST)


def _socket_error(host: str, timeout: float) -> str | None:
    """Why a ``unix://`` socket does not accept, or None (also None for other schemes)."""
    if not host.startswith("unix://"):
        return None
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or _one_line(exc)}"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _sdk_client(timeout: int) -> docker.DockerClient:
    """The SDK's client for DOCKER_HOST (unit tests replace this to catch engine access)."""
    return docker.from_env(timeout=timeout)


def query_engine(timeout: int) -> tuple[Mapping[str, Any], Mapping[str, Any]] | str:
    """``(version, info)``, or why the engine does not answer (an answer, never an exception)."""
    refused = _socket_error(_host(), timeout)
    if refused is not None:
        return refused
    try:
        client = _sdk_client(timeout)
    except (docker.errors.DockerException, OSError) as exc:
        return _one_line(exc)
    try:
        version = client.version()
        try:
            info = client.info()
        except (docker.errors.DockerException, OSError):
            info = {}
    except (docker.errors.DockerException, OSError) as exc:
        return _one_line(exc)
    finally:
        client.close()
    return version, info


def _stream_error(chunk: Mapping[str, object]) -> str | None:
    error = chunk.get("error")
    detail = chunk.get("errorDetail")
    if error is None and isinstance(detail, dict):
        error = detail.get("message")
    return None if error is None else str(error)


def _registry_stream(start: Callable[[], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """The chunks of a push or pull stream; a failure inside it or of the request raises.

    The daemon reports a registry's refusal inside a successful streamed answer, not as an HTTP
    error: every chunk is read and its ``error`` turned into an ``EngineError``.
    """
    try:
        for chunk in start():
            error = _stream_error(chunk)
            if error is not None:
                raise EngineError(error)
            yield chunk
    except docker.errors.APIError as exc:
        raise EngineError(str(exc.explanation or exc), status=exc.status_code) from None
    except OSError as exc:  # the engine's connection itself
        raise EngineError(str(exc), transport=True) from None


def _config_digest(attrs: Mapping[str, Any]) -> str | None:
    """The configuration's digest from ``inspect`` (``Image.config_digest``).

    Graph-driver stores inspect without ``Descriptor``: their ID is the configuration's digest.
    The containerd store's ID is the manifest's; the configuration's is the descriptor's
    ``config.digest`` annotation where there is one, else unknown.
    """
    descriptor = attrs.get("Descriptor")
    if not isinstance(descriptor, dict):
        return str(attrs["Id"])
    digest = (descriptor.get("annotations") or {}).get("config.digest")
    return None if digest is None else str(digest)


def _api_error(exc: docker.errors.APIError, what: str) -> EngineError:
    return EngineError(f"{what}: {exc.explanation or exc}", status=exc.status_code)


class DockerEngine:
    """The Docker Engine (see the module docstring)."""

    def __init__(self, client: docker.DockerClient, where: str) -> None:
        self.client = client
        self.api = client.api
        self.where = where
        self.backend = ClassicBackend(self)
        self._gpu: list[DeviceRequest] | None = None

    @classmethod
    def connect(cls, timeout: int = API_TIMEOUT_S) -> Self:
        """Connect to DOCKER_HOST and check that the engine answers."""
        where = _host()
        reason = _socket_error(where, timeout)
        if reason is None:
            try:
                client = _sdk_client(timeout)
                client.ping()
            except (docker.errors.DockerException, OSError) as exc:
                reason = (
                    exc.strerror or str(exc)
                    if isinstance(exc, OSError)
                    else str(exc).split("(", 1)[0].strip() or type(exc).__name__
                )
            else:
                return cls(client, where)
        raise EngineUnavailable(
            f"the Docker Engine at {where} does not answer: {reason}",
            hint=(
                "start it (as root: `dockerd &` or `systemctl start docker`; `make setup` does"
                " this on Debian), or join the docker group, or set DOCKER_HOST;"
                " `hepml-images doctor` checks the machine"
            ),
        )

    def close(self) -> None:
        """Release the connection."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # facts --------------------------------------------------------------------------------------

    def version(self) -> Mapping[str, Any]:
        """The engine's version document."""
        return dict(self.client.version())

    def info(self) -> Mapping[str, Any]:
        """The engine's system information."""
        return dict(self.client.info())

    def gateway(self) -> str | None:
        """The default bridge network's gateway, if the engine has one."""
        with contextlib.suppress(docker.errors.DockerException, KeyError, TypeError):
            for config in self.api.inspect_network("bridge")["IPAM"]["Config"] or []:
                if config.get("Gateway"):
                    return str(config["Gateway"])
        return None

    # images -------------------------------------------------------------------------------------

    def image(self, reference: str) -> Image | None:
        """The image a reference or ID names; None when there is none."""
        try:
            attrs = self.api.inspect_image(reference)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"inspecting {reference}") from None
        config = attrs.get("Config") or {}
        return Image(
            id=str(attrs["Id"]),
            tags=tuple(attrs.get("RepoTags") or ()),
            digests=tuple(attrs.get("RepoDigests") or ()),
            labels=dict(config.get("Labels") or {}),
            config=dict(config),
            layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
            size=int(attrs.get("Size") or 0),
            architecture=attrs.get("Architecture"),
            created=attrs.get("Created"),
            config_digest=_config_digest(attrs),
        )

    def tag(self, image_id: str, reference: str) -> None:
        """Point ``REPOSITORY:TAG`` at the image."""
        repository, tag = reference.rsplit(":", 1)
        try:
            self.api.tag(image_id, repository, tag, force=True)
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"tagging {image_id} as {reference}") from None

    def remove_image(self, reference: str, *, force: bool = False) -> None:
        """Remove an image or a tag of it."""
        try:
            self.api.remove_image(reference, force=force, noprune=False)
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"removing {reference}") from None

    def load(self, archive: Path) -> None:
        """Load a ``docker save`` archive; an error inside the answer's stream raises."""
        with archive.open("rb") as handle:
            try:
                for chunk in self.api.load_image(handle):
                    error = _stream_error(chunk)
                    if error is not None:
                        raise EngineError(f"the engine refused {archive.name}: {error}")
            except docker.errors.APIError as exc:
                raise _api_error(exc, f"loading {archive.name}") from None

    def save(self, image_id: str) -> Iterator[bytes]:
        """The image as a ``docker save`` archive, streamed."""
        return iter(self.api.get_image(image_id, chunk_size=_CHUNK))

    def files(self, image_id: str, directory: str) -> bytes | None:
        """A tar of ``directory`` in the image, read from a created (never started) container."""
        container = self.api.create_container(image_id, command=["true"], network_disabled=True)
        try:
            chunks, _ = self.api.get_archive(container["Id"], directory)
            return b"".join(chunks)
        except docker.errors.NotFound:
            return None
        finally:
            self.api.remove_container(container["Id"], force=True)

    # building -----------------------------------------------------------------------------------

    def build(
        self,
        request: BuildRequest,
        *,
        log: IO[str],
        progress: Callable[[str], None],
        activity: Activity,
    ) -> str:
        """Build with the request's backend: BuildKit (``docker buildx``) or the classic API."""
        if request.backend is None or request.backend.name != "buildkit":
            return self.backend.build(request, log=log, progress=progress, activity=activity)
        metadata = buildkit.run_build(
            request, request.backend, log=log, progress=progress, activity=activity
        )
        built = self.image(request.tag)
        config = str(metadata["containerimage.config.digest"])
        if built is None:
            raise BuildError(f"docker buildx build left no image {request.tag} in the engine")
        if config not in {built.id, built.config_digest}:
            raise BuildError(
                f"{request.tag} is {built.id} in the engine, not the image buildx built"
                f" (config {config}): another build moved the tag meanwhile"
            )
        return built.id

    def relabel(self, image_id: str, labels: Mapping[str, str], reference: str) -> str:
        """``FROM image`` with labels: a new configuration over the same layers, tagged."""
        built = None
        try:
            for chunk in self.api.build(
                fileobj=io.BytesIO(f"FROM {image_id}\n".encode()),
                tag=reference,
                labels=dict(labels),
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            ):
                error = _stream_error(chunk)
                if error is not None:
                    raise EngineError(f"labelling {image_id} failed: {error}")
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    built = str(aux["ID"])
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"labelling {image_id}") from None
        if built is None:
            raise EngineError(f"labelling {image_id} gave no image")
        return built

    # containers ---------------------------------------------------------------------------------

    def run(
        self,
        image_id: str,
        argv: Sequence[str],
        *,
        gpu: bool,
        timeout_s: int,
        labels: Mapping[str, str],
    ) -> RunResult:
        """Run in a fresh container without network (every GPU when ``gpu``); remove it."""
        requests = self.gpu_devices() if gpu else None
        try:
            container = self.client.containers.create(
                image_id,
                command=list(argv),
                network_disabled=True,
                device_requests=requests,
                labels=dict(labels),
            )
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"creating a container of {image_id}") from None
        try:
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise _api_error(exc, f"starting a container of {image_id}") from None
            try:
                status = container.wait(timeout=timeout_s)
                code, timed_out = int(status.get("StatusCode", 1)), False
            except Exception:  # noqa: BLE001 - requests' read timeout: the command hangs
                with contextlib.suppress(Exception):
                    container.kill()
                code, timed_out = 1, True
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        return RunResult(code=code, output=output[-_OUTPUT_CHARS:], timed_out=timed_out)

    def gpu_devices(self) -> list[DeviceRequest]:
        """Every GPU, asked for through CDI where the engine has it, else the NVIDIA runtime."""
        if self._gpu is None:
            info = self.info()
            dirs = info.get("CDISpecDirs") or []
            local = cdi_specs(dirs) if self.where.startswith("unix://") else ()
            if gpu_request(info, local) == "cdi":
                self._gpu = [DeviceRequest(driver="cdi", device_ids=[f"{NVIDIA_CDI_KIND}=all"])]
            else:
                self._gpu = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return self._gpu

    def kill(self, container: str) -> None:
        """Kill a container; it may have ended meanwhile."""
        with contextlib.suppress(docker.errors.DockerException):
            self.api.kill(container)

    # registries ---------------------------------------------------------------------------------

    def push(self, repository: str, tag: str, auth: Mapping[str, str] | None) -> str:
        """Push one tag; an error inside the push stream raises (the SDK does not)."""
        digest = None
        for chunk in _registry_stream(
            lambda: self.api.push(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=dict(auth) if auth else None,
            )
        ):
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            elif match := _PUSHED.match(str(chunk.get("status", ""))):
                digest = digest or match[1]  # the containerd image store says it only so
        if digest is None:
            raise EngineError(f"the push of {repository}:{tag} reported no digest", transport=True)
        return digest

    def pull(self, reference: str, auth: Mapping[str, str] | None) -> str:
        """Pull one image; an error inside the pull stream raises (the SDK does not)."""
        if "@" in reference:
            repository, tag = reference.split("@", 1)
        else:
            repository, tag = reference.rsplit(":", 1)
        for _ in _registry_stream(
            lambda: self.api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=dict(auth) if auth else None,
            )
        ):
            pass
        found = self.image(reference)
        if found is None:
            raise EngineError(f"the pull of {reference} left no image", transport=True)
        return found.id


def _stream_lines(chunks: Iterator[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, chunk) pairs from the build stream; ``stream`` text split into lines."""
    pending = ""
    for chunk in chunks:
        text = chunk.get("stream")
        if text is None:
            yield "", chunk
            continue
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            yield line, {}
    if pending:
        yield pending, {}


class ClassicBackend:
    """Builds through the Engine API's classic builder (what docker-py can drive).

    Progress comes from its ``Step N/M`` lines; the containers it runs are registered with the
    build's ``Activity`` so a cancel can kill them; a failed or cancelled build removes the
    intermediate images it created (tagged images are never touched).
    """

    name = "classic"

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    def build(
        self,
        request: BuildRequest,
        *,
        log: IO[str],
        progress: Callable[[str], None],
        activity: Activity,
    ) -> str:
        """Build the context; the image ID."""
        api = self.engine.api
        created: list[str] = []
        cached = False
        image_id: str | None = None
        error: str | None = None
        activity.check()
        stream = api.build(
            fileobj=io.BytesIO(request.context),
            custom_context=True,
            tag=request.tag,
            rm=True,
            forcerm=True,
            nocache=request.no_cache,
            pull=False,
            decode=True,
            buildargs=dict(request.build_args) or None,
            labels=dict(request.labels) or None,
        )
        try:
            for line, chunk in _stream_lines(stream):
                if chunk:
                    if "error" in chunk:
                        error = str(chunk.get("error", "")).strip()
                        log.write(f"ERROR: {error}\n")
                    elif "aux" in chunk and isinstance(chunk["aux"], dict):
                        image_id = chunk["aux"].get("ID", image_id)
                    elif "status" in chunk:
                        log.write(f"{chunk['status']} {chunk.get('progress', '')}".rstrip() + "\n")
                    continue
                log.write(line + "\n")
                if match := _STEP.match(line):
                    progress(f"step {match[1]}/{match[2]}: {match[3][:70]}")
                    # FROM reports the parent's ID: never one of ours to clean up
                    cached = match[3].upper().startswith("FROM ")
                elif line.strip() == "---> Using cache":
                    cached = True
                elif match := _RUNNING.match(line):
                    with activity.lock:
                        activity.containers.add(match[1])
                elif match := _LAYER.match(line):
                    if not cached:
                        created.append(match[1])
                    with activity.lock:
                        activity.containers.clear()
        except BaseException:
            self._remove_images(created, log)
            raise
        if activity.cancel.is_set():
            self._remove_images(created, log)
            raise Cancelled("cancelled")
        if error is not None or image_id is None:
            self._remove_images(created, log)
            raise BuildError(error or "the engine reported no image")
        return image_id

    def _remove_images(self, ids: list[str], log: IO[str]) -> None:
        """Remove the intermediate images of a failed build, newest first; skip ones in use."""
        for image in reversed(ids):
            log.write(self._remove_image(image) + "\n")

    def _remove_image(self, image: str) -> str:
        api = self.engine.api
        try:
            if api.inspect_image(image).get("RepoTags"):
                return f"kept tagged image {image}"
            api.remove_image(image, noprune=False)
        except docker.errors.ImageNotFound:
            return f"intermediate image {image} already gone"
        except Exception as exc:  # noqa: BLE001 - in use by another build: it is not dangling
            return f"kept intermediate image {image}: {exc}"
        return f"removed intermediate image {image}"
