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

The registry client is small and written here on top of ``requests`` (oras-py reads a whole
blob into memory for a monolithic upload and retries every error on its own fixed schedule):

- the file is hashed and uploaded as a stream; a blob the registry already has (``HEAD``) is not
  sent again; the upload is the standard ``POST`` then ``PUT ?digest=``;
- authentication answers the registry's challenge: ``Basic``, or ``Bearer`` with a token from the
  realm it names. Credentials are those given, else ``HEPML_REGISTRY_USER`` /
  ``HEPML_REGISTRY_PASSWORD``, else Docker's (``docker login``, credential helpers);
- transient failures (connection refused or reset, timeouts, 5xx, 429) are retried step by step
  with ``hepml_images.publish.BACKOFF``; authentication failures are reported at once;
- loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) are spoken to over plain HTTP
  unless told otherwise, and never through a proxy from the environment;
- a pulled layer is written next to its target, checked against its size and sha256 digest, and
  only then moved into place.

The password never appears in an exception, a log record or a ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

import requests
import requests.auth

from hepml_images import __version__
from hepml_images.publish import (
    PASSWORD_ENV,
    USER_ENV,
    PublishError,
    classify,
    is_loopback,
    registry_of,
    retrying,
)
from hepml_images.publish import credentials as environment_credentials

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from typing_extensions import Self

    #: Opens a request's data afresh for each attempt: bytes, or a file to stream.
    Body = Callable[[], contextlib.AbstractContextManager[IO[bytes] | bytes]]

T = TypeVar("T")
log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
SIF_CONFIG_MEDIA_TYPE = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
#: The layer type of Singularity < 3.7, typo included; Apptainer still pulls it.
SIF_LAYER_MEDIA_TYPE_PROTO = "appliciation/vnd.sylabs.sif.layer.tar"
SIF_LAYER_MEDIA_TYPES = (SIF_LAYER_MEDIA_TYPE, SIF_LAYER_MEDIA_TYPE_PROTO)
TITLE_ANNOTATION = "org.opencontainers.image.title"
CREATED_ANNOTATION = "org.opencontainers.image.created"
#: The config blob: OCI's empty JSON value.
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
#: Bytes read, hashed and written at a time.
CHUNK_SIZE = 1 << 20
#: Seconds to connect, and to wait for an answer once a request (or its body) is sent.
TIMEOUT = (30.0, 300.0)

_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))')
#: Statuses worth another try: Too Many Requests and every server error.
_RETRIED_STATUS = frozenset((429, *range(500, 600)))
_ACCEPT = (
    MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    DOCKER_LIST_MEDIA_TYPE,
)


class OrasError(PublishError):
    """An ORAS push or pull failed; ``kind`` is ``auth``, ``transient`` or ``other``.

    A ``PublishError`` so that ``publish``'s retry loop and its callers treat both alike.
    """

    def __init__(self, message: str, hint: str | None = None, *, kind: str = "other") -> None:
        super().__init__(message, kind=kind, hint=hint)


@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPOSITORY[:TAG][@DIGEST]``, with Docker's defaults filled in."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What the manifest is addressed by: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse ``[oras://]REF`` as Apptainer does: Docker Hub and ``latest`` by default."""
    rest = text.strip().removeprefix("oras://").removeprefix("//")
    name, _, digest = rest.partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    registry = registry_of(name)
    repository = name[len(registry) + 1 :] if name.startswith(f"{registry}/") else name
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    problem = None
    if not _HOST.fullmatch(registry):
        problem = f"the registry {registry!r} is not a host name"
    elif not _REPOSITORY.fullmatch(repository):
        problem = f"the repository {repository!r} is not valid (lower case, digits, . _ - /)"
    elif tag is not None and not _TAG.fullmatch(tag):
        problem = f"the tag {tag!r} is not valid (letters, digits, . _ -, at most 128)"
    elif digest and not _DIGEST.fullmatch(digest):
        problem = f"the digest {digest!r} is not sha256:<64 lower-case hex digits>"
    if problem is not None:
        raise OrasError(
            f"invalid ORAS reference {text!r}: {problem}",
            hint="write it as [oras://]HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]",
        )
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest or None)


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256:HEX, size)`` of a file, read in chunks (never whole into memory)."""
    sha = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK_SIZE):
                sha.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise OrasError(f"cannot read {path}: {exc.strerror or exc}") from None
    return f"sha256:{sha.hexdigest()}", size


def rfc3339(moment: datetime) -> str:
    """``2023-12-19T16:02:14Z``: UTC, whole seconds, as Go's ``time.RFC3339`` writes it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def sha256_digest(data: bytes) -> str:
    """``sha256:HEX`` of some bytes."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


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


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)


def resolve_credentials(registry: str, given: Mapping[str, str] | None) -> Credentials | None:
    """The credentials to answer ``registry``'s challenge with (None: anonymous).

    In order: those ``given`` (``username``/``password`` keys, as ``publish.credentials`` and the
    Docker SDK's ``auth_config`` have them), the environment (``HEPML_REGISTRY_USER`` /
    ``HEPML_REGISTRY_PASSWORD``), then Docker's configuration and credential helpers.
    """
    found = given if given is not None else environment_credentials(registry)
    if found is None:
        found = _docker_credentials(registry)
    if found is None:
        return None
    username, password = found.get("username"), found.get("password")
    if not username or not password:
        raise OrasError(
            f"the credentials for {registry} need a username and a password",
            hint=_auth_hint(registry),
        )
    return Credentials(username, password)


def _docker_credentials(registry: str) -> dict[str, str] | None:
    """What ``docker login`` stored for ``registry`` (config file or credential helper)."""
    import docker.auth  # noqa: PLC0415 - only needed when no credentials were given
    import docker.errors  # noqa: PLC0415

    try:
        entry = docker.auth.load_config().resolve_authconfig(registry)
    except docker.errors.DockerException as exc:
        log.debug("no Docker credentials for %s: %s", registry, type(exc).__name__)
        return None
    if not entry:
        return None
    username = entry.get("username") or entry.get("Username")
    password = entry.get("password") or entry.get("Password")
    if username and password:
        return {"username": str(username), "password": str(password)}
    return None


def _auth_hint(registry: str) -> str:
    return f"set {USER_ENV} and {PASSWORD_ENV}, or run `docker login {registry}`"


class _Authorization(requests.auth.AuthBase):
    """The ``Authorization`` header earned by the last challenge, added to every request.

    As ``requests`` does not re-apply it after a redirect, a blob redirected to a storage
    service on another host is fetched without it.
    """

    def __init__(self) -> None:
        self.value: str | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.value is not None:
            request.headers["Authorization"] = self.value
        return request

    def __repr__(self) -> str:
        return "_Authorization(<hidden>)"


def _registry_errors(response: requests.Response) -> str:
    """``CODE message`` of an OCI error body, or a short piece of the body."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(
            f"{error.get('code', '')} {error.get('message', '')}".strip()
            for error in errors
            if isinstance(error, dict)
        )
    except (ValueError, AttributeError):
        text = response.text[:200].strip() if response.text else ""
    return text


class _Client:
    """One repository of one registry, spoken to over HTTP(S)."""

    def __init__(
        self,
        ref: Reference,
        credentials: Credentials | None,
        *,
        plain_http: bool | None,
    ) -> None:
        self.ref = ref
        self.credentials = credentials
        loopback = is_loopback(ref.registry)
        scheme = "http" if (loopback if plain_http is None else plain_http) else "https"
        self.base = f"{scheme}://{ref.api_host}/v2/{ref.repository}"
        self.auth = _Authorization()
        self.session = requests.Session()
        # no proxy (nor .netrc) for this machine's own registry
        self.session.trust_env = not loopback
        self.session.auth = self.auth
        self.session.headers["User-Agent"] = f"hepml-images/{__version__}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.session.close()

    # errors -------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` without the password (or the Basic header made of it), whatever happened.

        Always, even for a password so short that it hides other words too: a message made
        harder to read is better than a password shown.
        """
        if self.credentials is not None:
            secret = self.credentials.password
            pair = f"{self.credentials.username}:{secret}".encode()
            text = text.replace(base64.b64encode(pair).decode(), "***")
            text = text.replace(secret, "***")
        return text

    def error(self, message: str, *, kind: str = "other", hint: str | None = None) -> OrasError:
        """An ``OrasError`` about this registry, scrubbed of the password."""
        if kind == "auth" and hint is None:
            hint = _auth_hint(self.ref.registry)
        return OrasError(
            self._scrub(message), None if hint is None else self._scrub(hint), kind=kind
        )

    def _failed(self, exc: requests.RequestException, what: str) -> OrasError:
        text = str(exc)
        kind = classify(text)
        transport = (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        )
        if (
            kind == "other"
            and isinstance(exc, transport)
            and not isinstance(exc, requests.exceptions.SSLError)
        ):
            kind = "transient"
        return self.error(f"{self.ref.registry}: {what} failed: {text}", kind=kind)

    def _refused(self, response: requests.Response, what: str) -> OrasError:
        status = response.status_code
        detail = f"{status} {response.reason or ''}".strip()
        errors = _registry_errors(response)
        if errors:
            detail += f": {errors}"
        if status in {401, 403}:
            if self.credentials is None:
                message = f"{self.ref.registry} asks for credentials and none were found ({detail})"
            else:
                message = (
                    f"{self.ref.registry} refused the credentials of {self.credentials.username!r}"
                    f" while {what} ({detail})"
                )
            return self.error(message, kind="auth")
        kind = "transient" if status in _RETRIED_STATUS else classify(detail)
        return self.error(f"{self.ref.registry}: {what} failed: {detail}", kind=kind)

    # requests -----------------------------------------------------------------------------------

    def request(  # noqa: PLR0913 - keyword-only settings of one HTTP request
        self,
        method: str,
        url: str,
        *,
        what: str,
        ok: tuple[int, ...],
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
        redirects: bool = True,
    ) -> requests.Response:
        """Send a request, answering one authentication challenge; the answer is in ``ok``.

        ``body`` opens the data afresh for each attempt (a file is streamed, not read whole).
        """
        challenged = False
        while True:
            try:
                with body() if body is not None else contextlib.nullcontext(None) as data:
                    response = self.session.request(
                        method,
                        url,
                        data=data,
                        headers=dict(headers or {}),
                        params=dict(params or {}),
                        stream=stream,
                        timeout=TIMEOUT,
                        allow_redirects=redirects,
                    )
            except requests.RequestException as exc:
                raise self._failed(exc, what) from None
            if response.status_code == 401 and not challenged:  # noqa: PLR2004 - Unauthorized
                challenged = True
                self._answer(response, what)
                response.close()
                continue
            if response.status_code in ok:
                return response
            with contextlib.closing(response):
                raise self._refused(response, what)

    def _answer(self, response: requests.Response, what: str) -> None:
        """Earn an ``Authorization`` header from a 401's ``WWW-Authenticate`` challenge."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.strip().partition(" ")
        params = {m[0].lower(): m[1] or m[2] for m in _CHALLENGE_PARAM.findall(rest)}
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise self._refused(response, what)
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            self.auth.value = "Basic " + base64.b64encode(pair).decode()
        elif scheme.lower() == "bearer" and params.get("realm"):
            self.auth.value = "Bearer " + self._token(params, what)
        else:
            raise self._refused(response, what)

    def _token(self, params: Mapping[str, str], what: str) -> str:
        """A bearer token from the challenge's realm, for its service and scope."""
        query = [(key, params[key]) for key in ("service",) if params.get(key)]
        query += [("scope", scope) for scope in params.get("scope", "").split()]
        basic = None
        if self.credentials is not None:
            basic = (self.credentials.username, self.credentials.password)
        try:
            answer = self.session.get(
                params["realm"], params=query, auth=basic, timeout=TIMEOUT, allow_redirects=True
            )
        except requests.RequestException as exc:
            raise self._failed(exc, f"{what} (getting a token)") from None
        with contextlib.closing(answer):
            if answer.status_code != 200:  # noqa: PLR2004 - OK
                raise self._refused(answer, f"{what} (getting a token)")
            try:
                data = answer.json()
            except ValueError:
                data = {}
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise self.error(f"{self.ref.registry}: the token service gave no token while {what}")
        return token

    # blobs and manifests ------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether the repository has the blob (a redirect to storage counts as yes)."""
        response = self.request(
            "HEAD",
            f"{self.base}/blobs/{digest}",
            what=f"looking for blob {digest}",
            ok=(200, 404, 301, 302, 303, 307, 308),
            redirects=False,
        )
        response.close()
        return response.status_code != 404  # noqa: PLR2004 - Not Found

    def upload_blob(
        self,
        digest: str,
        size: int,
        body: Body,
        name: str,
    ) -> None:
        """Upload a blob monolithically: ``POST`` an upload session, ``PUT`` the data to it."""
        what = f"uploading {name}"
        started = self.request("POST", f"{self.base}/blobs/uploads/", what=what, ok=(202,))
        started.close()
        location = started.headers.get("Location")
        if not location:
            raise self.error(f"{self.ref.registry}: {what} failed: no upload location")
        done = self.request(
            "PUT",
            urljoin(started.url, location),
            what=what,
            ok=(201, 204),
            body=body,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        done.close()
        stored = done.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise self.error(f"{self.ref.registry} stored {name} as {stored}, not {digest}")

    def put_manifest(self, data: bytes, tag: str) -> str | None:
        """Store a manifest under ``tag``; the digest the registry reports, if it does."""
        response = self.request(
            "PUT",
            f"{self.base}/manifests/{tag}",
            what=f"pushing the manifest of {self.ref}",
            ok=(200, 201, 204),
            body=lambda: contextlib.nullcontext(data),
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
        )
        response.close()
        return response.headers.get("Docker-Content-Digest")

    def get_manifest(self, *, missing_ok: bool = False) -> tuple[bytes, str] | None:
        """The manifest's bytes and media type (``Content-Type`` when it names none).

        With ``missing_ok``, None when the registry has no such tag or digest.
        """
        response = self.request(
            "GET",
            f"{self.base}/manifests/{self.ref.target}",
            what=f"reading the manifest of {self.ref}",
            ok=(200, 404) if missing_ok else (200,),
            headers={"Accept": ", ".join(_ACCEPT)},
        )
        if response.status_code == 404:  # noqa: PLR2004 - Not Found
            response.close()
            return None
        with contextlib.closing(response):
            data = response.content
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != sha256_digest(data):
            raise self.error(
                f"{self.ref.registry}: the manifest of {self.ref} does not match the digest "
                f"{stored} the registry gave for it"
            )
        return data, content_type

    def download(self, digest: str, size: int, target: Path) -> None:
        """Stream a blob into a file beside ``target``; move it there once size and hash match."""
        with tempfile.NamedTemporaryFile(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent, delete=False
        ) as part:
            partial = Path(part.name)
            try:
                received, got = self._receive(digest, part, f"downloading {digest} to {target}")
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        if received != size or got != digest:
            partial.unlink(missing_ok=True)
            raise self.error(
                f"{self.ref.registry}: the layer of {self.ref} does not match its manifest: "
                f"got {received} bytes with digest {got}, expected {size} bytes with {digest}",
                hint="pull again; if it persists the registry's copy is damaged",
            )
        partial.replace(target)

    def _receive(self, digest: str, sink: IO[bytes], what: str) -> tuple[int, str]:
        """Write a blob into ``sink`` as it arrives: ``(bytes received, their sha256 digest)``."""
        sha = hashlib.sha256()
        received = 0
        response = self.request(
            "GET", f"{self.base}/blobs/{digest}", what=what, ok=(200,), stream=True
        )
        with contextlib.closing(response):
            try:
                for chunk in response.iter_content(CHUNK_SIZE):
                    sha.update(chunk)
                    received += len(chunk)
                    sink.write(chunk)
            except requests.RequestException as exc:
                raise self._failed(exc, what) from None
        return received, f"sha256:{sha.hexdigest()}"


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
    credentials: Mapping[str, str] | None,
    plain_http: bool | None = None,
    created: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
    note: Callable[[str], None] = _warn,
) -> PushedSif:
    """Push the SIF file ``path`` to ``[oras://]HOST/REPO[:TAG]`` as Apptainer would.

    ``credentials`` are ``{"username": …, "password": …}`` (None: the environment, then Docker's).
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
    with _Client(
        ref, resolve_credentials(ref.registry, credentials), plain_http=plain_http
    ) as client:

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
    if media_type in {INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE}:
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
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
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
    credentials: Mapping[str, str] | None = None,
    plain_http: bool | None = None,
    note: Callable[[str], None] = _warn,
) -> tuple[str, str] | None:
    """The manifest and SIF layer digests at ``reference`` (None when the registry lacks it)."""
    ref = parse_reference(reference)
    with _Client(
        ref, resolve_credentials(ref.registry, credentials), plain_http=plain_http
    ) as client:
        found = retrying(lambda: client.get_manifest(missing_ok=True), note, time.sleep)
    if found is None:
        return None
    manifest, media_type = _parse_manifest(ref, *found)
    return sha256_digest(found[0]), str(_sif_layer(ref, manifest, media_type)["digest"])


def _parse_manifest(ref: Reference, data: bytes, content_type: str) -> tuple[Any, str]:
    """The manifest as JSON and its media type."""
    try:
        manifest = json.loads(data)
    except ValueError:
        raise OrasError(f"{ref}: the registry's manifest is not JSON") from None
    media_type = str(
        (manifest.get("mediaType") if isinstance(manifest, dict) else None) or content_type
    )
    return manifest, media_type


def pull_sif(
    reference: str,
    target: Path,
    *,
    credentials: Mapping[str, str] | None = None,
    plain_http: bool | None = None,
    note: Callable[[str], None] = _warn,
) -> PulledSif:
    """Pull the SIF file at ``[oras://]HOST/REPO[:TAG|@DIGEST]`` into ``target``, verified.

    ``target`` is the file to write, or a directory to write the layer's title into. The file
    appears only once its size and sha256 digest match the manifest's layer. ``credentials``,
    ``plain_http`` and ``note`` are as for ``push_sif``.
    """
    ref = parse_reference(reference)
    with _Client(
        ref, resolve_credentials(ref.registry, credentials), plain_http=plain_http
    ) as client:
        found = retrying(client.get_manifest, note, time.sleep)
        assert found is not None  # noqa: S101 - a missing manifest raised
        data, content_type = found
        manifest_digest = sha256_digest(data)
        if ref.digest is not None and manifest_digest != ref.digest:
            raise OrasError(f"{ref.registry} answered {ref} with a manifest of {manifest_digest}")
        manifest, media_type = _parse_manifest(ref, data, content_type)
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
