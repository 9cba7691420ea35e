"""What an image says about itself, read where it is (side effects: engine, network, files).

- a local image: the engine's record of it (``Engine.image``);
- a remote image: its manifest and configuration over the registry API (``registry.http``),
  no layers pulled, with the registry's credentials (``registry.credentials``);
- a SIF file: its header, primary partition and labels object (no squashfs is read).

The module is not called ``inspect``: that name belongs to the standard library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hepml_images.errors import HepmlError
from hepml_images.hashing import sha256_file
from hepml_images.registry import RegistryError, registry_of
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from hepml_images.engine import Engine


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


def local(engine: Engine, reference: str) -> ImageInfo | None:
    """The image in the local engine, if it is there."""
    image = engine.image(reference)
    if image is None:
        return None
    return ImageInfo(
        reference=reference,
        where="local engine",
        image_id=image.id,
        digest=image.digests[0].split("@", 1)[1] if image.digests else None,
        created=image.created,
        architecture=image.architecture,
        labels=dict(image.labels),
    )


def sif_file(path: Path) -> ImageInfo:
    """A SIF file: its header, primary partition and labels object (no squashfs is read)."""
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
        created=rfc3339(info.created),
        architecture=info.arch,
        labels=labels,
    )


def remote(reference: str, note: Callable[[str], None] | None = None) -> ImageInfo:
    """The image in its registry: manifest and config, no layers."""
    from hepml_images.registry.http import remote_manifest  # noqa: PLC0415 - requests is heavy

    registry = registry_of(reference)
    try:
        found = remote_manifest(reference, note=note or (lambda _m: None), sleep=time.sleep)
    except RegistryError as exc:
        raise InspectFailed(
            f"cannot read {reference} from {registry}: {exc.message}", hint=exc.hint
        ) from None
    if found is None:
        raise InspectFailed(f"{reference} is not in {registry} (no such tag)")
    config = found.config or {}
    descriptor = found.document.get("config")
    return ImageInfo(
        reference=reference,
        where=f"registry {registry}",
        image_id=descriptor.get("digest") if isinstance(descriptor, dict) else None,
        digest=found.digest,
        created=config.get("created"),
        architecture=config.get("architecture"),
        labels=dict((config.get("config") or {}).get("Labels") or {}),
    )


def remote_digest(reference: str) -> str | None:
    """The manifest digest a reference points at in its registry (None: no such tag)."""
    from hepml_images.registry.http import manifest_digest  # noqa: PLC0415 - requests is heavy

    try:
        return manifest_digest(reference, note=lambda _m: None, sleep=time.sleep)
    except RegistryError as exc:
        raise InspectFailed(f"cannot read {reference}: {exc.message}", hint=exc.hint) from None
