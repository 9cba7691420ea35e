"""Build one image: a bootstrapped base from distro packages, or a rendered Dockerfile.

Both paths report progress through a callback, write the full log to a file, and leave nothing
behind when they fail or are cancelled: no container, no intermediate image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hepml_images import ir
from hepml_images.errors import HepmlError
from hepml_images.render import render
from hepml_images.render.writers import CA_ARG

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from docker import DockerClient

    from hepml_images.resolve import ResolvedVariant

#: The PATH of a bootstrapped image (Docker's default for Linux images).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_RUNNING = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


class BuildError(HepmlError):
    """One image failed to build; ``message`` says why in one line."""


class Cancelled(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The build was cancelled (Ctrl-C / SIGTERM)."""

    exit_code = 130


def _kill(client: DockerClient, container: str) -> None:
    with contextlib.suppress(Exception):  # it may have finished meanwhile
        client.api.kill(container)


@dataclass
class Activity:
    """What one build has running, so that a cancel can stop it from another thread."""

    cancel: threading.Event
    lock: threading.Lock = field(default_factory=threading.Lock)
    containers: set[str] = field(default_factory=set)
    process: subprocess.Popen[bytes] | None = None

    def stop(self, client: DockerClient) -> None:
        """Kill what is running; the build then fails fast and cleans up after itself."""
        with self.lock:
            containers = list(self.containers)
            process = self.process
        for container in containers:
            _kill(client, container)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

    def check(self) -> None:
        """Raise ``Cancelled`` once a cancel was asked for."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")


def iso_time(epoch: int) -> str:
    """RFC 3339 time of a SOURCE_DATE_EPOCH, as image configs write it."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le"}.get(machine, machine)


def image_config(
    plan: ir.ImagePlan,
    diff_id: str,
    epoch: int,
    created_by: str,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The image configuration of a bootstrapped root filesystem, canonical JSON.

    The image ID is the SHA-256 of these bytes: with the same root filesystem and epoch it is
    the same on every run and machine.
    """
    # a plan's own ENV steps, if any, are built on top of this image (build_bootstrapped)
    config: dict[str, Any] = {
        "Env": [DEFAULT_PATH],
        "Labels": {**dict(plan.labels), **(labels or {})},
    }
    if plan.cmd is not None:
        config["Cmd"] = list(plan.cmd)
    if plan.entrypoint is not None:
        config["Entrypoint"] = list(plan.entrypoint)
    created = iso_time(epoch)
    document = {
        "architecture": _architecture(),
        "config": config,
        "created": created,
        "history": [{"created": created, "created_by": created_by}],
        "os": "linux",
        "rootfs": {"diff_ids": [diff_id], "type": "layers"},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(target: Path, rootfs: Path, config: bytes, repo_tags: list[str]) -> str:
    """A ``docker save`` archive of a one-layer image; returns the image ID."""
    config_hex = hashlib.sha256(config).hexdigest()
    layer_dir = sha256_file(rootfs)
    manifest = json.dumps(
        [
            {
                "Config": f"{config_hex}.json",
                "RepoTags": repo_tags,
                "Layers": [f"{layer_dir}/layer.tar"],
            }
        ]
    ).encode()
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.add(rootfs, arcname=f"{layer_dir}/layer.tar", recursive=False)
    return f"sha256:{config_hex}"


def bootstrap_argv(base: ir.FromBootstrap, rootfs: Path) -> list[str]:
    """The rendered mmdebstrap command, writing to ``rootfs``."""
    return [str(rootfs) if arg == base.rootfs else arg for arg in base.argv]


def build_bootstrapped(  # noqa: PLR0913 - keyword-only build settings
    client: DockerClient,
    variant: ResolvedVariant,
    *,
    log: IO[str],
    progress: Callable[[str], None],
    activity: Activity,
    epoch: int,
    no_cache: bool,
    ca_url: str | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Bootstrap the root filesystem with mmdebstrap and load it as a reproducible image."""
    plan = variant.plan
    base = plan.base
    assert isinstance(base, ir.FromBootstrap)  # noqa: S101 - the caller dispatches on it
    if shutil.which(base.argv[0]) is None:
        raise BuildError(
            f"{base.argv[0]} is not installed: it bootstraps {variant.key} from Debian packages",
            hint="install it (Debian/Ubuntu: apt-get install mmdebstrap; `make setup` does)",
        )
    with tempfile.TemporaryDirectory(prefix="hepml-bootstrap-") as tmp:
        rootfs = Path(tmp) / base.rootfs
        argv = bootstrap_argv(base, rootfs)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        log.write(f"$ SOURCE_DATE_EPOCH={epoch} {' '.join(argv)}\n")
        progress("mmdebstrap " + base.suite)
        activity.check()
        process = subprocess.Popen(  # noqa: S603 - argv from a validated plan, no shell
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        with activity.lock:
            activity.process = process
        assert process.stdout is not None  # noqa: S101
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(line + "\n")
            if line.startswith("I: "):
                progress(line[3:80])
        code = process.wait()
        with activity.lock:
            activity.process = None
        activity.check()
        if code != 0:
            raise BuildError(f"mmdebstrap exited with status {code}")
        progress("loading root filesystem")
        diff_id = "sha256:" + sha256_file(rootfs)
        config = image_config(plan, diff_id, epoch, " ".join(base.argv), labels)
        final_plan = plan
        loaded_ref = variant.content_ref
        if plan.steps:  # pragma: no cover - the shipped bases have no steps of their own
            loaded_ref = variant.content_ref.replace(":", "-rootfs:", 1)
            final_plan = replace(plan, base=ir.FromImage(ref=loaded_ref))
        archive = Path(tmp) / "image.tar"
        image_id = write_archive(archive, rootfs, config, [loaded_ref])
        rootfs.unlink()
        with archive.open("rb") as handle:
            for chunk in client.api.load_image(handle):
                log.write(json.dumps(chunk) + "\n")
                if "error" in chunk:
                    raise BuildError(f"loading the root filesystem failed: {chunk['error']}")
        log.write(f"loaded {loaded_ref} as {image_id}\n")
    if final_plan is plan:
        return image_id
    return build_dockerfile(  # pragma: no cover - see above
        client,
        variant,
        final_plan,
        log=log,
        progress=progress,
        activity=activity,
        no_cache=no_cache,
        ca_url=ca_url,
        labels=labels,
    )


def context_archive(plan: ir.ImagePlan, *, ca_bundle: bool) -> io.BytesIO:
    """The build context as an in-memory tar: the Dockerfile and the plan's context files."""
    rendered = render(plan, ca_bundle=ca_bundle)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        files = [("Dockerfile", rendered.dockerfile.encode(), 0o644)]
        files += [(f.name, f.content, f.mode) for f in rendered.context if f.name != "rootfs.tar"]
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


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


def build_dockerfile(  # noqa: PLR0913 - keyword-only build settings
    client: DockerClient,
    variant: ResolvedVariant,
    plan: ir.ImagePlan | None = None,
    *,
    log: IO[str],
    progress: Callable[[str], None],
    activity: Activity,
    no_cache: bool,
    ca_url: str | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Build the rendered Dockerfile; on failure remove the images this build created."""
    plan = plan or variant.plan
    context = context_archive(plan, ca_bundle=ca_url is not None)
    created: list[str] = []
    cached = False
    image_id: str | None = None
    error: str | None = None
    activity.check()
    stream = client.api.build(
        fileobj=context,
        custom_context=True,
        tag=variant.content_ref,
        rm=True,
        forcerm=True,
        nocache=no_cache,
        pull=False,
        decode=True,
        buildargs={CA_ARG: ca_url} if ca_url else None,
        labels=dict(labels) if labels else None,
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
        _remove_images(client, created, log)
        raise
    if activity.cancel.is_set():
        _remove_images(client, created, log)
        raise Cancelled("cancelled")
    if error is not None or image_id is None:
        _remove_images(client, created, log)
        raise BuildError(error or "the engine reported no image")
    return image_id


def _remove_images(client: DockerClient, ids: list[str], log: IO[str]) -> None:
    """Remove the intermediate images of a failed build, newest first; skip ones in use."""
    for image in reversed(ids):
        log.write(_remove_image(client, image) + "\n")


def _remove_image(client: DockerClient, image: str) -> str:
    """Remove one untagged intermediate image; tagged images are never touched."""
    from docker.errors import ImageNotFound  # noqa: PLC0415

    try:
        if client.api.inspect_image(image).get("RepoTags"):
            return f"kept tagged image {image}"
        client.api.remove_image(image, noprune=False)
    except ImageNotFound:
        return f"intermediate image {image} already gone"
    except Exception as exc:  # noqa: BLE001 - in use by another build: it is not dangling
        return f"kept intermediate image {image}: {exc}"
    return f"removed intermediate image {image}"


#: The files of the image's /.hepml/ that are copied next to the build log.
MANIFEST_FILES = ("spec.json", "os-packages.txt", "pip-freeze.txt")


def export_manifest(client: DockerClient, image_id: str, target: Path) -> list[Path]:
    """Copy the image's resolved spec and package lists into ``target`` (without running it)."""
    from docker.errors import NotFound  # noqa: PLC0415

    container = client.api.create_container(image_id, command=["true"], network_disabled=True)
    written: list[Path] = []
    try:
        try:
            chunks, _ = client.api.get_archive(container["Id"], "/.hepml")
        except NotFound:
            return written
        archive = io.BytesIO(b"".join(chunks))
        with tarfile.open(fileobj=archive) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in MANIFEST_FILES and member.name.count("/") == 1:
                    data = tar.extractfile(member)
                    if data is None:  # pragma: no cover - regular files always have data
                        continue
                    target.mkdir(parents=True, exist_ok=True)
                    (target / name).write_bytes(data.read())
                    written.append(target / name)
    finally:
        client.api.remove_container(container["Id"], force=True)
    return written
