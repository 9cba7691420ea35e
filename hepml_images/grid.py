"""Grid artifacts from tested images: which image, which epoch, where it goes (mostly pure).

Consumers of built images, after the smoke tests: SIF files and sandboxes (``sif.make``), ORAS
publication of SIF files (``oras``) and DUCC wishlists for CVMFS. What is decided here:

- the image a SIF is made from is the one that passed its smoke tests, labelled with that result
  (``publish.stamp``), so ``apptainer inspect`` shows it;
- the epoch every time inside the SIF takes: ``SOURCE_DATE_EPOCH`` when set, else the image's
  ``org.opencontainers.image.created`` (itself the epoch or the commit time), so the same image
  gives the same bytes;
- SIF tags: each image tag with ``-sif`` appended, in the image's repository
  (``publish.sif_references``, under the same tag policy as images);
- DUCC wishlist entries pinned by the registry's manifest digest, with the content tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from hepml_images.errors import HepmlError, UsageError
from hepml_images.provenance import DEFAULT_EPOCH, OCI
from hepml_images.publish import content_tag, gate, repositories, stamp
from hepml_images.registry import is_loopback, registry_of
from hepml_images.times import parse_rfc3339, source_date_epoch

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from hepml_images.engine import Engine
    from hepml_images.resolve import ResolvedVariant

DUCC_REPO = "unpacked.cern.ch"
DUCC_OUTPUT_FORMAT = "$(scheme)://$(registry)/thin/$(image)"


class NotTested(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The image has no passing smoke-test result."""


def sif_filename(variant: ResolvedVariant) -> str:
    """``<spec>-<variant>.sif``."""
    return f"{variant.spec}-{variant.slug}.sif"


def tested_image(
    engine: Engine, variant: ResolvedVariant, image_id: str, *, allow_untested: bool
) -> tuple[str, str]:
    """The reference and ID of the image to convert: the tested one, stamped with its result."""
    why = gate(image_id)
    if why is not None:
        if not allow_untested:
            raise NotTested(
                f"{variant.key} is not converted: {why}",
                hint="grid images are made from tested images; --allow-untested overrides",
            )
        return variant.content_ref, image_id
    return f"{variant.content_ref}-tested", stamp(engine, variant, image_id)


def epoch_for(labels: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """The time recorded in the SIF: SOURCE_DATE_EPOCH, else when the image says it was made."""
    epoch = source_date_epoch(environ)
    if epoch is not None:
        return epoch
    created = parse_rfc3339(labels.get(f"{OCI}.created") or "")
    return DEFAULT_EPOCH if created is None else created


@dataclass(frozen=True, kw_only=True)
class WishlistEntry:
    """One published image: where it is and its manifest digest."""

    repository: str
    tag: str
    digest: str


def published(
    variants: Sequence[ResolvedVariant],
    registry: str | None,
    lookup: Callable[[str], str | None],
) -> list[WishlistEntry]:
    """The published images of ``variants`` (by content tag) with their digests.

    ``lookup(reference)`` returns the registry's manifest digest, or None when it is not there.
    """
    entries, missing = [], []
    for variant in variants:
        tag = content_tag(variant)
        for repository in repositories(variant, registry):
            digest = lookup(f"{repository}:{tag}")
            if digest is None:
                missing.append(f"{repository}:{tag}")
            else:
                entries.append(WishlistEntry(repository=repository, tag=tag, digest=digest))
    if missing:
        raise UsageError(
            f"not published: {', '.join(missing)}",
            hint="publish them first (hepml-images publish); a wishlist pins what a registry has",
        )
    return entries


def wishlist(
    entries: Sequence[WishlistEntry],
    *,
    user: str,
    cvmfs_repo: str = DUCC_REPO,
    output_format: str = DUCC_OUTPUT_FORMAT,
) -> str:
    """A DUCC wishlist (version 1) for the entries, each pinned ``:tag@digest``."""
    inputs = []
    for entry in entries:
        registry = registry_of(entry.repository)
        host = "registry.hub.docker.com" if registry == "docker.io" else registry
        path = entry.repository.removeprefix(f"{registry}/")
        if registry == "docker.io" and "/" not in path:
            path = f"library/{path}"
        inputs.append(
            f"{'http' if is_loopback(registry) else 'https'}://{host}/{path}:{entry.tag}@{entry.digest}"
        )
    document = {
        "version": 1,
        "user": user,
        "cvmfs_repo": cvmfs_repo,
        "output_format": output_format,
        "input": inputs,
    }
    header = "# DUCC wishlist written by hepml-images: images pinned by manifest digest\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
