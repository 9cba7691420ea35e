"""Push tested images to OCI registries under their tags, safely.

- Only an image with a passing smoke-test result for its exact ID is pushed.
- The content-digest tag goes first; its manifest digest is what every other tag must end up
  pointing at. An immutable tag that already points elsewhere is refused unless ``force``.
- Errors inside the push stream are errors (docker-py does not raise on them); transient ones
  (registry down, 5xx, connection reset) are retried with backoff, authentication failures are
  reported at once with the registry's name.
- Credentials come from the Docker config / credential helpers (the SDK reads them) or from
  ``HEPML_REGISTRY_USER`` / ``HEPML_REGISTRY_PASSWORD``; they are never printed or stored.
"""

from __future__ import annotations

import io
import ipaddress
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from hepml_images.errors import HepmlError, UsageError
from hepml_images.smoke import session

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from docker import DockerClient

    from hepml_images.resolve import ResolvedVariant

T = TypeVar("T")
USER_ENV = "HEPML_REGISTRY_USER"
PASSWORD_ENV = "HEPML_REGISTRY_PASSWORD"  # noqa: S105 - the variable's name, not a password
REGISTRY_ENV = "HEPML_REGISTRY"
#: Waits between attempts of a transient failure (seconds): five attempts in about 15 s.
BACKOFF = (1.0, 2.0, 4.0, 8.0)

_AUTH = ("unauthorized", "authentication required", "no basic auth credentials", "denied")
_TRANSIENT = (
    "connection refused",
    "connection reset",
    "eof",
    "i/o timeout",
    "timeout",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway",
    "500 internal server error",
    "received unexpected http status: 5",
    "no such host",
    "tls handshake",
)


class PublishError(HepmlError):
    """A push failed; ``kind`` is ``auth``, ``transient`` or ``other``."""

    def __init__(self, message: str, *, kind: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


def classify(message: str) -> str:
    """``auth``, ``transient`` or ``other`` for an engine/registry error text."""
    text = message.lower()
    if any(word in text for word in _AUTH):
        return "auth"
    if any(word in text for word in _TRANSIENT):
        return "transient"
    return "other"


def credentials(registry: str) -> dict[str, str] | None:
    """Credentials from the environment for ``registry``; None lets the SDK use Docker's."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return {"username": user, "password": password, "serveraddress": registry}
    return None


def registry_of(repository: str) -> str:
    """The registry host of a repository reference (Docker Hub when it has none)."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def host_name(registry: str) -> str:
    """The host of ``HOST[:PORT]`` (brackets of an IPv6 address removed)."""
    if registry.startswith("["):
        return registry[1 : registry.find("]")]
    return registry.split(":", 1)[0]


def is_loopback(registry: str) -> bool:
    """Whether ``HOST[:PORT]`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    host = host_name(registry)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


#: Labels the published image adds to the tested one: its smoke-test result.
SMOKE_LABELS = (
    "io.hepml.smoke.result",
    "io.hepml.smoke.image",
    "io.hepml.smoke.checks",
    "io.hepml.smoke.finished",
)


def stamp(client: DockerClient, variant: ResolvedVariant, image_id: str) -> str:
    """The image that is published: the tested one plus labels with its smoke-test result.

    Only the configuration differs (no layer is added). It is made once per tested image and
    kept as ``<content ref>-tested``, so publishing again pushes the same manifest.
    """
    from docker.errors import ImageNotFound  # noqa: PLC0415

    ref = f"{variant.content_ref}-tested"
    try:
        attrs = client.api.inspect_image(ref)
        if (attrs.get("Config") or {}).get("Labels", {}).get("io.hepml.smoke.image") == image_id:
            return str(attrs["Id"])
    except ImageNotFound:
        pass
    result = session.load_result(image_id) or {}
    checks = result.get("checks", [])
    counts = {s: sum(1 for c in checks if c.get("status") == s) for s in ("passed", "skipped")}
    labels = {
        "io.hepml.smoke.result": "passed" if result.get("passed") else "failed",
        "io.hepml.smoke.image": image_id,
        "io.hepml.smoke.checks": f"{counts['passed']} passed, {counts['skipped']} skipped",
        "io.hepml.smoke.finished": str(result.get("finished", "")),
    }
    dockerfile = f"FROM {image_id}\n".encode()
    built = None
    for chunk in client.api.build(
        fileobj=io.BytesIO(dockerfile),
        tag=ref,
        labels=labels,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    ):
        error = _stream_error(chunk)
        if error is not None:
            raise PublishError(f"labelling {variant.content_ref} failed: {error}", kind="other")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            built = str(aux["ID"])
    if built is None:
        raise PublishError(f"labelling {variant.content_ref} gave no image", kind="other")
    return built


def gate(image_id: str) -> str | None:
    """Why an image may not be published (None when it may)."""
    result = session.load_result(image_id)
    if result is None:
        return "it has no smoke-test result (run `hepml-images test` or build without --no-test)"
    if not result.get("passed"):
        failed = [c["name"] for c in result.get("checks", []) if c.get("status") == "failed"]
        return "its smoke tests failed: " + (", ".join(failed) or "see `hepml-images test`")
    return None


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


def _stream_error(chunk: dict[str, object]) -> str | None:
    error = chunk.get("error")
    detail = chunk.get("errorDetail")
    if error is None and isinstance(detail, dict):
        error = detail.get("message")
    return None if error is None else str(error)


def retrying(
    action: Callable[[], T],
    note: Callable[[str], None],
    sleep: Callable[[float], None],
) -> T:
    """Run ``action``; on a transient failure wait and try again, up to ``len(BACKOFF)`` times."""
    for attempt, delay in enumerate(BACKOFF, start=1):
        try:
            return action()
        except PublishError as exc:  # noqa: PERF203 - a retry loop
            if exc.kind != "transient":
                raise
            note(f"{exc.message} — retrying in {delay:.0f} s (attempt {attempt})")
            sleep(delay)
    return action()


def _raise_for(message: str, registry: str) -> None:
    kind = classify(message)
    if kind == "auth":
        raise PublishError(
            f"{registry} refused the credentials: {message}",
            kind=kind,
            hint=f"`docker login {registry}`, or set {USER_ENV} and {PASSWORD_ENV}",
        )
    raise PublishError(f"{registry}: {message}", kind=kind)


def push_tag(client: DockerClient, repository: str, tag: str, auth: dict[str, str] | None) -> str:
    """Push one tag; return the manifest digest the registry stored."""
    from docker.errors import APIError  # noqa: PLC0415

    registry = registry_of(repository)
    digest = None
    try:
        for chunk in client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth
        ):
            error = _stream_error(chunk)
            if error is not None:
                _raise_for(error, registry)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
    except APIError as exc:
        _raise_for(str(exc.explanation or exc), registry)
    except OSError as exc:  # the engine's connection itself
        raise PublishError(f"{registry}: {exc}", kind="transient") from exc
    if digest is None:
        raise PublishError(
            f"{registry}: the push of {repository}:{tag} reported no digest", kind="transient"
        )
    return digest


def remote_digest(
    client: DockerClient, repository: str, tag: str, auth: dict[str, str] | None
) -> str | None:
    """The manifest digest a tag points at in the registry (None: no such tag)."""
    from docker.errors import APIError, NotFound  # noqa: PLC0415

    registry = registry_of(repository)
    try:
        found = client.api.inspect_distribution(f"{repository}:{tag}", auth_config=auth)
    except NotFound:
        return None
    except APIError as exc:
        message = str(exc.explanation or exc)
        if "manifest unknown" in message.lower() or "not found" in message.lower():
            return None
        _raise_for(message, registry)
    return str(found["Descriptor"]["digest"])


def planned_tags(variant: ResolvedVariant) -> tuple[str, list[str], set[str]]:
    """The content tag, then the other tags (immutable first), and the immutable set."""
    immutable = set(variant.immutable_tags)
    others = list(dict.fromkeys((*variant.immutable_tags, *variant.publish_tags)))
    first = content_tag(variant)
    return first, [t for t in others if t != first], immutable


def publish_one(  # noqa: PLR0913 - keyword-only settings
    client: DockerClient,
    variant: ResolvedVariant,
    image_id: str,
    repository: str,
    *,
    dry_run: bool,
    force: bool,
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Published:
    """Publish one variant to one repository (see the module docstring for the rules)."""
    registry = registry_of(repository)
    auth = credentials(registry)
    done = Published(variant=variant, image_id=image_id, repository=repository)
    first, others, immutable = planned_tags(variant)
    try:
        if not dry_run:
            image_id = stamp(client, variant, image_id)
            done.published_id = image_id
        current: dict[str, str | None] = {}
        for tag in (first, *others):
            current[tag] = retrying(
                partial(remote_digest, client, repository, tag, auth), note, sleep
            )
        if dry_run:
            for tag in (first, *others):
                action = "would push" if current[tag] is None else "would update"
                if tag in immutable and current[tag] is not None:
                    action = "exists (immutable)"
                done.tags.append(TagOutcome(tag, action, current[tag] or ""))
            return done
        client.api.tag(image_id, repository, first)
        digest = retrying(partial(push_tag, client, repository, first, auth), note, sleep)
        done.manifest = digest
        action = "already there" if current[first] == digest else "pushed"
        done.tags.append(TagOutcome(first, action, digest))
        for tag in others:
            if current[tag] == digest:
                done.tags.append(TagOutcome(tag, "already there", digest))
                continue
            if tag in immutable and current[tag] is not None and not force:
                done.tags.append(
                    TagOutcome(
                        tag,
                        "refused",
                        f"immutable tag points at {current[tag]}, not {digest}; --force overwrites",
                    )
                )
                continue
            client.api.tag(image_id, repository, tag)
            pushed = retrying(partial(push_tag, client, repository, tag, auth), note, sleep)
            done.tags.append(TagOutcome(tag, "pushed" if current[tag] is None else "moved", pushed))
    except PublishError as exc:
        done.error = exc.message
        done.hint = exc.hint
    return done


def publish(  # noqa: PLR0913 - keyword-only settings
    client: DockerClient,
    targets: Sequence[tuple[ResolvedVariant, str]],
    *,
    registry: str | None,
    dry_run: bool,
    force: bool,
    note: Callable[[str], None],
) -> list[Published]:
    """Gate every image, then publish the admitted ones; refusals are results, not exceptions."""
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
                    client, variant, image_id, repository, dry_run=dry_run, force=force, note=note
                )
            )
    return results
