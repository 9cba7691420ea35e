"""Build one image: a bootstrapped base from distro packages, or a rendered Dockerfile.

Both paths report progress through a callback, write the full log to a file, and leave nothing
behind when they fail or are cancelled: no container, no intermediate image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hepml_images import ir
from hepml_images.engine import Activity, BuildRequest, EngineError
from hepml_images.errors import BuildError, Cancelled
from hepml_images.hashing import sha256_file
from hepml_images.render import render
from hepml_images.render.writers import CA_ARG
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hepml_images.engine import Engine
    from hepml_images.engine.buildkit import Backend
    from hepml_images.resolve import ResolvedVariant

__all__ = ["Activity", "BuildError", "Cancelled"]

#: The PATH of a bootstrapped image (Docker's default for Linux images).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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

    Their SHA-256 is the configuration's digest (the image ID on graph-driver stores; the
    containerd store's ID is its manifest's digest): with the same root filesystem and epoch
    it is the same on every run and machine, and so is the image ID in either store.
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
    created = rfc3339(epoch)
    document = {
        "architecture": _architecture(),
        "config": config,
        "created": created,
        "history": [{"created": created, "created_by": created_by}],
        "os": "linux",
        "rootfs": {"diff_ids": [diff_id], "type": "layers"},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def write_archive(target: Path, rootfs: Path, config: bytes, repo_tags: list[str]) -> str:
    """A ``docker save`` archive of a one-layer image; returns its configuration's digest.

    That digest is the image ID only on graph-driver stores (the containerd store's ID is the
    digest of the manifest it makes on load): a caller reads the ID from the engine after
    ``load`` (``loaded_id``).
    """
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


def loaded_id(engine: Engine, reference: str) -> str:
    """The engine's ID of the image a ``load`` just tagged ``reference`` (see ``Image``)."""
    image = engine.image(reference)
    if image is None:
        raise EngineError(f"the engine loaded the archive but has no image {reference}")
    return image.id


def bootstrap_argv(base: ir.FromBootstrap, rootfs: Path) -> list[str]:
    """The rendered mmdebstrap command, writing to ``rootfs``."""
    return [str(rootfs) if arg == base.rootfs else arg for arg in base.argv]


def build_bootstrapped(  # noqa: PLR0913 - keyword-only build settings
    engine: Engine,
    variant: ResolvedVariant,
    *,
    log: IO[str],
    progress: Callable[[str], None],
    activity: Activity,
    epoch: int,
    no_cache: bool,
    ca_url: str | None,
    labels: Mapping[str, str] | None = None,
    tag: str | None = None,
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
        loaded_ref = tag or variant.content_ref
        if plan.steps:  # pragma: no cover - the shipped bases have no steps of their own
            loaded_ref = variant.content_ref.replace(":", "-rootfs:", 1)
            final_plan = replace(plan, base=ir.FromImage(ref=loaded_ref))
        archive = Path(tmp) / "image.tar"
        config_digest = write_archive(archive, rootfs, config, [loaded_ref])
        rootfs.unlink()
        try:
            engine.load(archive)
            image_id = loaded_id(engine, loaded_ref)
        except EngineError as exc:
            raise BuildError(f"loading the root filesystem failed: {exc.message}") from None
        note = "" if image_id == config_digest else f" (configuration {config_digest})"
        log.write(f"loaded {loaded_ref} as {image_id}{note}\n")
    if final_plan is plan:
        return image_id
    return build_dockerfile(  # pragma: no cover - see above
        engine,
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


def build_dockerfile(  # noqa: PLR0913 - keyword-only build settings
    engine: Engine,
    variant: ResolvedVariant,
    plan: ir.ImagePlan | None = None,
    *,
    log: IO[str],
    progress: Callable[[str], None],
    activity: Activity,
    no_cache: bool,
    ca_url: str | None,
    labels: Mapping[str, str] | None = None,
    epoch: int | None = None,
    backend: Backend | None = None,
    tag: str | None = None,
) -> str:
    """Build the rendered Dockerfile with the given backend (default: classic); the image ID.

    BuildKit also gets ``SOURCE_DATE_EPOCH`` (the image's ``created`` and history times); the
    classic builder ignores it, so it is not passed there.
    """
    plan = plan or variant.plan
    build_args = {CA_ARG: ca_url} if ca_url else {}
    if backend is not None and backend.name == "buildkit" and epoch is not None:
        build_args["SOURCE_DATE_EPOCH"] = str(epoch)
    request = BuildRequest(
        context=context_archive(plan, ca_bundle=ca_url is not None).getvalue(),
        tag=tag or variant.content_ref,
        no_cache=no_cache,
        build_args=build_args,
        labels=dict(labels or {}),
        backend=backend,
    )
    return engine.build(request, log=log, progress=progress, activity=activity)


#: The files of the image's /.hepml/ that are copied next to the build log.
MANIFEST_FILES = ("spec.json", "os-packages.txt", "pip-freeze.txt")


def export_manifest(engine: Engine, image_id: str, target: Path) -> list[Path]:
    """Copy the image's resolved spec and package lists into ``target`` (without running it)."""
    data = engine.files(image_id, "/.hepml")
    written: list[Path] = []
    if data is None:
        return written
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in MANIFEST_FILES and member.name.count("/") == 1:
                content = tar.extractfile(member)
                if content is None:  # pragma: no cover - regular files always have data
                    continue
                target.mkdir(parents=True, exist_ok=True)
                (target / name).write_bytes(content.read())
                written.append(target / name)
    return written
