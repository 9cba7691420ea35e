"""Push tested images (and their SIF files) to OCI registries under their tags, safely.

- **The gate**: only an image with a passing smoke-test result for its exact ID is published.
- **Tags**: the content-digest tag goes first; its manifest digest is what every other tag must
  end up pointing at. Each tag then follows ``registry.tag_action``: left alone when it already
  points there, pushed when absent, moved when mutable, refused when immutable (unless
  ``force``). SIF artifacts follow the same rule under ``<tag>-sif``, the content tag counting
  as immutable.
- **Faults**: the engine's push errors are errors; transient ones are retried with backoff
  (``registry.retrying``), authentication failures are reported at once with the registry's
  name. Credentials come from ``registry.credentials`` and go only to the engine's push request
  and the registry API; they are never printed or stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING

from hepml_images.engine import EngineError
from hepml_images.errors import BuildError, HepmlError, UsageError
from hepml_images.hashing import sha256_digest
from hepml_images.registry import (
    REGISTRY_ENV,
    Credentials,
    Kind,
    RegistryError,
    TagAction,
    auth_hint,
    credentials,
    kind_of_engine_error,
    registry_of,
    retrying,
    tag_action,
)
from hepml_images.smoke import session
from hepml_images.times import parse_rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from hepml_images.engine import Engine
    from hepml_images.resolve import ResolvedVariant
    from hepml_images.sif.make import Made

#: Labels the published image adds to the tested one: its smoke-test result.
SMOKE_LABELS = (
    "io.hepml.smoke.result",
    "io.hepml.smoke.image",
    "io.hepml.smoke.checks",
)
SIF_SUFFIX = "-sif"


class PublishFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """Something was refused or failed to push (the table says what)."""


def gate(image_id: str) -> str | None:
    """Why an image may not be published or converted (None when it may)."""
    result = session.load_result(image_id)
    if result is None:
        return "it has no smoke-test result (run `hepml-images test` or build without --no-test)"
    if not result.get("passed"):
        failed = [c["name"] for c in result.get("checks", []) if c.get("status") == "failed"]
        return "its smoke tests failed: " + (", ".join(failed) or "see `hepml-images test`")
    return None


def repositories(variant: ResolvedVariant, registry: str | None) -> list[str]:
    """Where a variant goes: ``REGISTRY[/NAMESPACE]/<spec>``, else the spec's repositories."""
    if registry:
        return [f"{registry.rstrip('/')}/{variant.spec}"]
    if variant.content.publish.repositories:
        return list(variant.content.publish.repositories)
    raise UsageError(
        f"nowhere to publish {variant.key}: no --registry and no publish.repositories in the spec",
        hint=f"give --registry HOST[/NAMESPACE] or set {REGISTRY_ENV}",
    )


def content_tag(variant: ResolvedVariant) -> str:
    """The tag derived from the content digest (the same as the local content tag)."""
    return variant.content_ref.rsplit(":", 1)[1]


def planned_tags(variant: ResolvedVariant) -> tuple[str, list[str], set[str]]:
    """The content tag, then the other tags (immutable first), and the immutable set."""
    immutable = set(variant.immutable_tags)
    others = list(dict.fromkeys((*variant.immutable_tags, *variant.publish_tags)))
    first = content_tag(variant)
    return first, [t for t in others if t != first], immutable


def sif_references(variant: ResolvedVariant, registry: str | None) -> list[tuple[str, bool]]:
    """Where the SIF goes: ``REPOSITORY:<tag>-sif`` for the content tag and every other tag.

    Each comes with whether it is immutable (the content tag and the spec's immutable tags).
    """
    first, others, immutable = planned_tags(variant)
    return [
        (f"{repository}:{tag}{SIF_SUFFIX}", tag == first or tag in immutable)
        for repository in repositories(variant, registry)
        for tag in (first, *others)
    ]


def stamp(engine: Engine, variant: ResolvedVariant, image_id: str) -> str:
    """The image that is published: the tested one plus labels with its smoke-test result.

    Only the configuration differs (no layer is added), and it gets the canonical rewrite of
    every build (``build.normalize``) at the image's own epoch, so the same tested image and
    result give the same published image on every run: the labels hold the result and what was
    tested, not when (the result store keeps the time). It is made once per tested image and
    kept as ``<content ref>-tested``, so publishing again pushes the same manifest.
    """
    ref = f"{variant.content_ref}-tested"
    found = engine.image(ref)
    if found is not None and found.labels.get("io.hepml.smoke.image") == image_id:
        return found.id
    return stamped(engine, image_id, smoke_labels(image_id), ref)


def smoke_labels(image_id: str) -> dict[str, str]:
    """The labels that say what the smoke tests of ``image_id`` found (``SMOKE_LABELS``)."""
    result = session.load_result(image_id) or {}
    checks = result.get("checks", [])
    counts = {s: sum(1 for c in checks if c.get("status") == s) for s in ("passed", "skipped")}
    return {
        "io.hepml.smoke.result": "passed" if result.get("passed") else "failed",
        "io.hepml.smoke.image": image_id,
        "io.hepml.smoke.checks": f"{counts['passed']} passed, {counts['skipped']} skipped",
    }


def stamped(engine: Engine, image_id: str, labels: Mapping[str, str], ref: str) -> str:
    """``image_id`` with ``labels`` added, canonical, tagged ``ref``; its ID."""
    from hepml_images.build.normalize import normalize  # noqa: PLC0415 - publishing only

    image = engine.image(image_id)
    created = image.labels.get("org.opencontainers.image.created") if image else None
    epoch = parse_rfc3339(created) if created else None
    try:
        relabelled = engine.relabel(image_id, labels, ref)
        if image is None or epoch is None:
            return relabelled
        return normalize(
            engine,
            relabelled,
            parent_layers=len(image.layers),
            epoch=epoch,
            tag=ref,
            progress=lambda _: None,
        )
    except (EngineError, BuildError) as exc:
        raise RegistryError(f"labelling {ref} failed: {exc.message}") from None


@dataclass
class TagOutcome:
    """What happened to one tag."""

    tag: str
    action: str
    detail: str = ""


@dataclass
class Published:
    """One variant's publication to one repository."""

    variant: ResolvedVariant
    image_id: str
    repository: str
    manifest: str | None = None
    #: the pushed image: the tested one plus its smoke-test labels
    published_id: str | None = None
    tags: list[TagOutcome] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None


def push_tag(engine: Engine, repository: str, tag: str, auth: Credentials | None) -> str:
    """Push one tag through the engine; the manifest digest the registry stored.

    The engine's failure becomes a ``RegistryError`` of the right kind (retried or not).
    """
    registry = registry_of(repository)
    try:
        return engine.push(
            repository, tag, auth.auth_config(registry) if auth is not None else None
        )
    except EngineError as exc:
        kind = kind_of_engine_error(exc)
        if kind is Kind.AUTH:
            raise RegistryError(
                f"{registry} refused the credentials: {exc.message}",
                kind=kind,
                hint=auth_hint(registry),
            ) from None
        raise RegistryError(f"{registry}: {exc.message}", kind=kind) from None


def current_digests(
    repository: str,
    tags: Sequence[str],
    auth: Credentials | None,
    *,
    note: Callable[[str], None],
    sleep: Callable[[float], None],
) -> dict[str, str | None]:
    """The manifest digest each tag points at now (None: absent), read over the registry API."""
    from hepml_images.registry.http import open_client  # noqa: PLC0415 - requests is heavy

    current: dict[str, str | None] = {}
    with open_client(f"{repository}:{tags[0]}", given=auth) as client:
        for tag in tags:
            found = retrying(partial(client.get_manifest, missing_ok=True, target=tag), note, sleep)
            current[tag] = None if found is None else sha256_digest(found[0])
    return current


def publish_one(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    variant: ResolvedVariant,
    image_id: str,
    repository: str,
    *,
    dry_run: bool,
    force: bool,
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    content_only: bool = False,
) -> Published:
    """Publish one admitted variant to one repository (see the module docstring).

    ``content_only``: the content tag alone (the cache repository of ``build --push-cache``).
    """
    done = Published(variant=variant, image_id=image_id, repository=repository)
    first, others, immutable = planned_tags(variant)
    if content_only:
        others = []
    try:
        auth = credentials(registry_of(repository))
        if not dry_run:
            image_id = stamp(engine, variant, image_id)
            done.published_id = image_id
        current = current_digests(repository, [first, *others], auth, note=note, sleep=sleep)
        if dry_run:
            for tag in (first, *others):
                action = "would push" if current[tag] is None else "would update"
                if tag in immutable and current[tag] is not None:
                    action = "exists (immutable)"
                done.tags.append(TagOutcome(tag, action, current[tag] or ""))
            return done
        engine.tag(image_id, f"{repository}:{first}")
        digest = retrying(partial(push_tag, engine, repository, first, auth), note, sleep)
        done.manifest = digest
        action = "already there" if current[first] == digest else "pushed"
        done.tags.append(TagOutcome(first, action, digest))
        for tag in others:
            decided = tag_action(current[tag], digest, immutable=tag in immutable, force=force)
            if decided is TagAction.UP_TO_DATE:
                done.tags.append(TagOutcome(tag, decided.value, digest))
            elif decided is TagAction.REFUSE:
                done.tags.append(
                    TagOutcome(
                        tag,
                        decided.value,
                        f"immutable tag points at {current[tag]}, not {digest}; --force overwrites",
                    )
                )
            else:
                engine.tag(image_id, f"{repository}:{tag}")
                pushed = retrying(partial(push_tag, engine, repository, tag, auth), note, sleep)
                done.tags.append(TagOutcome(tag, decided.value, pushed))
    except (RegistryError, EngineError) as exc:
        done.error = exc.message
        done.hint = exc.hint
    return done


def publish(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    targets: Sequence[tuple[ResolvedVariant, str]],
    *,
    registry: str | None,
    dry_run: bool,
    force: bool,
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    content_only: bool = False,
) -> list[Published]:
    """Gate every image, then publish the admitted ones; refusals are results, not exceptions.

    ``content_only``: push the content tag alone (see ``publish_one``).
    """
    results: list[Published] = []
    for variant, image_id in targets:
        for repository in repositories(variant, registry):
            refused = gate(image_id)
            if refused is not None:
                results.append(
                    Published(
                        variant=variant,
                        image_id=image_id,
                        repository=repository,
                        error=f"refused {variant.content_ref} ({image_id[7:19]}): {refused}",
                    )
                )
                continue
            results.append(
                publish_one(
                    engine,
                    variant,
                    image_id,
                    repository,
                    dry_run=dry_run,
                    force=force,
                    note=note,
                    sleep=sleep,
                    content_only=content_only,
                )
            )
    return results


def failure(results: Sequence[Published]) -> PublishFailed | None:
    """The error a publication ends with: None when every tag was pushed or already there."""
    problems = [r for r in results if r.error or any(t.action == "refused" for t in r.tags)]
    if not problems:
        return None
    immutable = any(t.action == "refused" for r in problems for t in r.tags)
    return PublishFailed(
        f"{len(problems)} of {len(results)} publications refused or failed (see the table)",
        hint="--force overwrites an immutable tag; bump the spec version instead if you can"
        if immutable
        else None,
    )


@dataclass(frozen=True, kw_only=True)
class SifPublished:
    """One SIF file at one ORAS reference."""

    variant: ResolvedVariant
    reference: str
    action: str
    manifest: str
    layer: str


def publish_sifs(
    made: Sequence[tuple[ResolvedVariant, Made]],
    registry: str | None,
    *,
    force: bool,
    note: Callable[[str], None],
) -> list[SifPublished]:
    """Push each SIF as an ORAS artifact under ``<tag>-sif`` (see ``sif_references``).

    A tag that holds this very file is left alone; one that holds another file follows
    ``tag_action`` (an immutable one is refused unless ``force``).
    """
    from hepml_images import oras  # noqa: PLC0415 - requests is loaded only to push SIFs

    rows = []
    for variant, result in made:
        layer = f"sha256:{result.sha256}"
        for reference, immutable in sif_references(variant, registry):
            remote = oras.remote_sif(reference, note=note)
            held = remote[1] if remote else None
            decided = tag_action(held, layer, immutable=immutable, force=force)
            if decided is TagAction.UP_TO_DATE and remote is not None:
                digest = remote[0]
            elif decided is TagAction.REFUSE and held is not None:
                digest = f"immutable tag holds {held[:19]}…"
            else:
                pushed = oras.push_sif(
                    result.path,
                    reference,
                    credentials=None,
                    created=datetime.fromtimestamp(result.epoch, tz=timezone.utc),
                    note=note,
                )
                digest = pushed.manifest_digest
            rows.append(
                SifPublished(
                    variant=variant,
                    reference=f"oras://{reference}",
                    action="up to date" if decided is TagAction.UP_TO_DATE else decided.value,
                    manifest=digest,
                    layer=layer,
                )
            )
    return rows


def sif_failure(rows: Sequence[SifPublished]) -> PublishFailed | None:
    """The error SIF publication ends with: None unless an immutable tag was refused."""
    refused = [r.reference for r in rows if r.action == TagAction.REFUSE.value]
    if not refused:
        return None
    return PublishFailed(
        f"{len(refused)} immutable SIF tags hold another file: {', '.join(refused)}",
        hint="--force overwrites them; bump the spec version instead if you can",
    )
