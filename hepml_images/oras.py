"""Push SIF files to OCI registries as ORAS artifacts the way Apptainer does, and pull them back.

``apptainer push x.sif oras://HOST/REPO:TAG`` stores an OCI image manifest with one layer, the
SIF file itself, and an empty JSON config; ``apptainer pull oras://…`` accepts exactly that. The
layout, as Apptainer's ``internal/pkg/client/oras`` (``image.go``, ``config.go``, ``layer.go``,
``oras.go``) writes it:

- the manifest is ``application/vnd.oci.image.manifest.v1+json``, schema version 2, without an
  ``artifactType``;
- its config is the two bytes ``{}`` under ``application/vnd.sylabs.sif.config.v1+json``, the
  descriptor also carrying them inline (``data``);
- its single layer is ``application/vnd.sylabs.sif.layer.v1.sif`` with the annotation
  ``org.opencontainers.image.title`` set to the file's base name;
- the manifest has the annotation ``org.opencontainers.image.created`` (RFC 3339, UTC).

A pull accepts one layer of that type (or of Singularity's misspelt prototype type), as Apptainer
does, and does not insist on the config's type: older clients were not consistent about it.

Registry access (references, credentials, authentication, retries, error classes) is
``hepml_images.registry`` and its HTTP client ``registry.http``, shared with image publishing;
what is here is what makes a SIF artifact: its manifest, and the checks a pull makes of it.

The password never appears in an exception, a log record or a ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from hepml_images.hashing import file_digest as _file_digest
from hepml_images.hashing import sha256_digest
from hepml_images.registry import (
    DEFAULT_TAG,
    DIGEST,
    Credentials,
    Reference,
    RegistryError,
    retrying,
)
from hepml_images.registry import parse_reference as _parse
from hepml_images.registry.http import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    open_client,
    parse_manifest,
)
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from hepml_images.registry.http import Body

T = TypeVar("T")
log = logging.getLogger(__name__)

SIF_CONFIG_MEDIA_TYPE = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
#: The layer type of Singularity < 3.7, typo included; Apptainer still pulls it.
SIF_LAYER_MEDIA_TYPE_PROTO = "appliciation/vnd.sylabs.sif.layer.tar"
SIF_LAYER_MEDIA_TYPES = (SIF_LAYER_MEDIA_TYPE, SIF_LAYER_MEDIA_TYPE_PROTO)
TITLE_ANNOTATION = "org.opencontainers.image.title"
CREATED_ANNOTATION = "org.opencontainers.image.created"
#: The config blob: OCI's empty JSON value.
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = sha256_digest(EMPTY_CONFIG)


class OrasError(RegistryError):
    """An ORAS push or pull failed (a ``RegistryError``: retried and reported alike)."""


def parse_reference(text: str) -> Reference:
    """Parse ``[oras://]REF`` as Apptainer does: Docker Hub and ``latest`` by default."""
    try:
        return _parse(text, scheme="oras")
    except RegistryError as exc:
        raise OrasError(exc.message, hint=exc.hint) from None


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256:HEX, size)`` of a file, read in blocks (never whole into memory)."""
    try:
        hexdigest, size = _file_digest(path)
    except OSError as exc:
        raise OrasError(f"cannot read {path}: {exc.strerror or exc}") from None
    return f"sha256:{hexdigest}", size


def sif_manifest(
    layer_digest: str,
    size: int,
    title: str,
    *,
    created: datetime,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest Apptainer pushes for one SIF file (keys in the order Apptainer writes them).

    ``annotations`` are added to the manifest's own (like ``apptainer push --annotation``); the
    ``created`` time is set last.
    """
    manifest_annotations = {**(annotations or {}), CREATED_ANNOTATION: rfc3339(created)}
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": SIF_CONFIG_MEDIA_TYPE,
            "size": len(EMPTY_CONFIG),
            "digest": EMPTY_CONFIG_DIGEST,
            "data": base64.b64encode(EMPTY_CONFIG).decode(),
        },
        "layers": [
            {
                "mediaType": SIF_LAYER_MEDIA_TYPE,
                "size": size,
                "digest": layer_digest,
                "annotations": {TITLE_ANNOTATION: title},
            }
        ],
        "annotations": dict(sorted(manifest_annotations.items())),
    }


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are pushed (and hashed): compact JSON, UTF-8."""
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class PushedSif:
    """A SIF file pushed: where, under which digests, and which blobs had to be sent."""

    reference: str
    manifest_digest: str
    layer_digest: str
    size: int
    media_type: str
    config_media_type: str
    layer_media_type: str
    #: digests of the blobs this push uploaded (empty: the registry had them all)
    uploaded: tuple[str, ...]


@dataclass(frozen=True)
class PulledSif:
    """A SIF file pulled and verified, with what its manifest said."""

    reference: str
    path: Path
    manifest_digest: str
    layer_digest: str
    size: int
    media_type: str
    config_media_type: str
    layer_media_type: str
    #: the manifest's annotations
    annotations: Mapping[str, str]
    #: the layer's annotations (the title among them)
    layer_annotations: Mapping[str, str]


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise OrasError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def _warn(message: str) -> None:
    log.warning("%s", message)


def push_sif(  # noqa: PLR0913 - keyword-only settings
    path: Path,
    reference: str,
    *,
    credentials: Credentials | None,
    plain_http: bool | None = None,
    created: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
    note: Callable[[str], None] = _warn,
) -> PushedSif:
    """Push the SIF file ``path`` to ``[oras://]HOST/REPO[:TAG]`` as Apptainer would.

    ``credentials`` None means those of ``registry.credentials`` (environment, then Docker's).
    ``plain_http`` None means plain HTTP for a loopback registry and HTTPS otherwise. ``created``
    is the manifest's creation time (None: now, as Apptainer does for a SIF without one), so a
    fixed value gives the same manifest digest for the same file. ``annotations`` are added to
    the manifest. ``note`` is told of each retry.
    """
    ref = parse_reference(reference)
    if ref.digest is not None:
        raise OrasError(
            f"cannot push to {reference}: a push names a tag, not a digest",
            hint="drop the @sha256:… part; the digest is what the push reports",
        )
    tag = ref.tag or DEFAULT_TAG
    if not path.is_file():
        raise OrasError(f"{path} is not a file", hint="give the path of a .sif file")
    layer_digest, size = file_digest(path)
    manifest = sif_manifest(
        layer_digest,
        size,
        path.name,
        created=created or datetime.now(timezone.utc),
        annotations=annotations,
    )
    data = encode_manifest(manifest)
    manifest_digest = sha256_digest(data)
    uploaded: list[str] = []
    with open_client(ref, given=credentials, plain_http=plain_http) as client:

        def send(digest: str, length: int, body: Body, name: str) -> None:
            if client.has_blob(digest):
                log.info("%s: blob %s is already there", ref.registry, digest)
                return
            client.upload_blob(digest, length, body, name)
            uploaded.append(digest)

        def retried(action: Callable[[], T]) -> T:
            return retrying(action, note, time.sleep)

        retried(
            lambda: send(
                EMPTY_CONFIG_DIGEST,
                len(EMPTY_CONFIG),
                lambda: contextlib.nullcontext(EMPTY_CONFIG),
                "the config",
            )
        )
        retried(lambda: send(layer_digest, size, lambda: _opened(path), path.name))
        stored = retried(lambda: client.put_manifest(data, tag))
    if stored and stored != manifest_digest:
        raise OrasError(
            f"{ref.registry} stored the manifest of {ref} as {stored}, not {manifest_digest}"
        )
    log.info("pushed %s to %s (%s)", path.name, ref, manifest_digest)
    return PushedSif(
        reference=str(ref),
        manifest_digest=manifest_digest,
        layer_digest=layer_digest,
        size=size,
        media_type=MANIFEST_MEDIA_TYPE,
        config_media_type=SIF_CONFIG_MEDIA_TYPE,
        layer_media_type=SIF_LAYER_MEDIA_TYPE,
        uploaded=tuple(uploaded),
    )


def _sif_layer(ref: Reference, manifest: object, media_type: str) -> dict[str, Any]:
    """The one SIF layer of a manifest, or an error saying why it is not a SIF artifact."""
    if media_type in INDEX_MEDIA_TYPES:
        raise OrasError(
            f"{ref} is an image index, not a SIF artifact",
            hint="an ORAS SIF is one manifest with one layer; pull container images with docker",
        )
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or len(layers) != 1:
        count = len(layers) if isinstance(layers, list) else 0
        raise OrasError(f"{ref} is not a SIF artifact: it has {count} layers, not 1")
    layer = layers[0]
    if not isinstance(layer, dict) or layer.get("mediaType") not in SIF_LAYER_MEDIA_TYPES:
        found = layer.get("mediaType") if isinstance(layer, dict) else None
        raise OrasError(
            f"{ref} is not a SIF artifact: its layer is {found!r}, not {SIF_LAYER_MEDIA_TYPE}"
        )
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise OrasError(f"{ref}: the SIF layer's digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or size < 0:
        raise OrasError(f"{ref}: the SIF layer's size {size!r} is not a byte count")
    return layer


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}


def remote_sif(
    reference: str,
    *,
    credentials: Credentials | None = None,
    plain_http: bool | None = None,
    note: Callable[[str], None] = _warn,
) -> tuple[str, str] | None:
    """The manifest and SIF layer digests at ``reference`` (None when the registry lacks it)."""
    ref = parse_reference(reference)
    with open_client(ref, given=credentials, plain_http=plain_http) as client:
        found = retrying(lambda: client.get_manifest(missing_ok=True), note, time.sleep)
    if found is None:
        return None
    manifest, media_type = parse_manifest(ref, *found)
    return sha256_digest(found[0]), str(_sif_layer(ref, manifest, media_type)["digest"])


def pull_sif(
    reference: str,
    target: Path,
    *,
    credentials: Credentials | None = None,
    plain_http: bool | None = None,
    note: Callable[[str], None] = _warn,
) -> PulledSif:
    """Pull the SIF file at ``[oras://]HOST/REPO[:TAG|@DIGEST]`` into ``target``, verified.

    ``target`` is the file to write, or a directory to write the layer's title into. The file
    appears only once its size and sha256 digest match the manifest's layer. ``credentials``,
    ``plain_http`` and ``note`` are as for ``push_sif``.
    """
    ref = parse_reference(reference)
    with open_client(ref, given=credentials, plain_http=plain_http) as client:
        found = retrying(client.get_manifest, note, time.sleep)
        assert found is not None  # noqa: S101 - a missing manifest raised
        data, content_type = found
        manifest_digest = sha256_digest(data)
        if ref.digest is not None and manifest_digest != ref.digest:
            raise OrasError(f"{ref.registry} answered {ref} with a manifest of {manifest_digest}")
        manifest, media_type = parse_manifest(ref, data, content_type)
        layer = _sif_layer(ref, manifest, media_type)
        layer_annotations = _strings(layer.get("annotations"))
        if target.is_dir():
            title = Path(layer_annotations.get(TITLE_ANNOTATION, "")).name
            if title in {"", ".", ".."}:
                title = f"{layer['digest'].split(':', 1)[1][:12]}.sif"
            target /= title
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OrasError(f"cannot create {target.parent}: {exc.strerror or exc}") from None
        retrying(lambda: client.download(layer["digest"], layer["size"], target), note, time.sleep)
    config = manifest.get("config")
    log.info("pulled %s to %s (%s)", ref, target, manifest_digest)
    return PulledSif(
        reference=str(ref),
        path=target,
        manifest_digest=manifest_digest,
        layer_digest=layer["digest"],
        size=layer["size"],
        media_type=media_type,
        config_media_type=str(config.get("mediaType", "")) if isinstance(config, dict) else "",
        layer_media_type=layer["mediaType"],
        annotations=_strings(manifest.get("annotations")),
        layer_annotations=layer_annotations,
    )
