"""Provenance of an image, local (the engine) or remote (the registry, without pulling layers).

Remote images are read with skopeo (the registry API: manifest and config only). Credentials
come from ``HEPML_REGISTRY_USER``/``HEPML_REGISTRY_PASSWORD`` through a private temporary auth
file (never the command line), else from skopeo's and Docker's usual auth files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepml_images.errors import HepmlError, UsageError
from hepml_images.publish import credentials, is_loopback, registry_of

if TYPE_CHECKING:
    from docker import DockerClient


class InspectFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The image could not be read."""


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    """What an image says about itself."""

    reference: str
    where: str
    image_id: str | None
    digest: str | None
    created: str | None
    architecture: str | None
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "reference": self.reference,
            "where": self.where,
            "image_id": self.image_id,
            "digest": self.digest,
            "created": self.created,
            "architecture": self.architecture,
            "labels": dict(sorted(self.labels.items())),
        }


def local(client: DockerClient, reference: str) -> ImageInfo | None:
    """The image in the local engine, if it is there."""
    from docker.errors import ImageNotFound  # noqa: PLC0415

    try:
        attrs = client.api.inspect_image(reference)
    except ImageNotFound:
        return None
    digests = attrs.get("RepoDigests") or []
    return ImageInfo(
        reference=reference,
        where="local engine",
        image_id=str(attrs["Id"]),
        digest=str(digests[0].split("@", 1)[1]) if digests else None,
        created=attrs.get("Created"),
        architecture=attrs.get("Architecture"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
    )


def sif_file(path: Path) -> ImageInfo:
    """A SIF file: its header, primary partition and labels object (no squashfs is read)."""
    from hepml_images.build.images import iso_time, sha256_file  # noqa: PLC0415
    from hepml_images.sif import format as sif_format  # noqa: PLC0415
    from hepml_images.sif.check import sif_labels  # noqa: PLC0415

    try:
        info = sif_format.read_sif(path)
    except (OSError, sif_format.SifError) as exc:
        raise InspectFailed(f"cannot read {path}: {exc}") from None
    labels = sif_labels(path)
    return ImageInfo(
        reference=str(path),
        where="SIF file",
        image_id=labels.get("io.hepml.smoke.image"),
        digest=f"sha256:{sha256_file(path)}",
        created=iso_time(info.created),
        architecture=info.arch,
        labels=labels,
    )


def remote(reference: str) -> ImageInfo:
    """The image in its registry: manifest and config, no layers."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise UsageError(
            "reading a remote image needs skopeo",
            hint="install it (Debian/Ubuntu: apt-get install skopeo; `make setup` does)",
        )
    registry = registry_of(reference)
    argv = [skopeo, "inspect", f"docker://{reference}"]
    if is_loopback(registry):
        argv.insert(2, "--tls-verify=false")
    auth = credentials(registry)
    with tempfile.TemporaryDirectory(prefix="hepml-auth-") as tmp:
        env = dict(os.environ)
        if auth is not None:
            token = base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
            path = Path(tmp) / "auth.json"
            path.touch(mode=0o600)
            path.write_text(json.dumps({"auths": {registry: {"auth": token}}}), encoding="utf-8")
            env["REGISTRY_AUTH_FILE"] = str(path)
        done = _skopeo(argv, env)
        raw = _skopeo([*argv[:-1], "--raw", argv[-1]], env)
    for result in (done, raw):
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["skopeo failed"])[-1]
            raise InspectFailed(f"cannot read {reference} from {registry}: {message}")
    manifest = json.loads(raw.stdout)
    config = manifest.get("config") or {}
    data = json.loads(done.stdout)
    return ImageInfo(
        reference=reference,
        where=f"registry {registry}",
        image_id=config.get("digest"),
        digest=data.get("Digest"),
        created=data.get("Created"),
        architecture=data.get("Architecture"),
        labels=dict(data.get("Labels") or {}),
    )


def _skopeo(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv, the reference is checked by skopeo
        argv, capture_output=True, text=True, timeout=300, env=env, check=False
    )
