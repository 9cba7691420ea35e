"""The registry API over HTTP(S): manifests and blobs of one repository (side effects: network).

A small client on ``requests`` shared by ORAS (SIF artifacts), ``inspect --remote`` and
``ducc-wishlist`` (and publish's look at what a tag holds now):

- authentication answers the registry's challenge: ``Basic``, or ``Bearer`` with a token from
  the realm it names, with the credentials of ``hepml_images.registry.credentials``;
- failures are ``RegistryError``s classified by status and exception type (``registry``);
- loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) are spoken to over plain HTTP
  unless told otherwise, and never through a proxy from the environment;
- blobs are streamed (uploads from a file, downloads into a file beside the target, moved into
  place once size and digest match); manifests are checked against the digest the registry
  gives for them.

The password never appears in an exception, a log record or a ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests
import requests.auth

from hepml_images import __version__
from hepml_images.hashing import sha256_digest
from hepml_images.registry import (
    Credentials,
    Kind,
    Reference,
    RegistryError,
    auth_hint,
    credentials,
    is_loopback,
    kind_of_status,
    parse_reference,
    retrying,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from typing_extensions import Self

    #: Opens a request's data afresh for each attempt: bytes, or a file to stream.
    Body = Callable[[], contextlib.AbstractContextManager[IO[bytes] | bytes]]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = (INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE)
#: Bytes read, hashed and written at a time.
CHUNK_SIZE = 1 << 20
#: Seconds to connect, and to wait for an answer once a request (or its body) is sent.
TIMEOUT = (30.0, 300.0)
#: The biggest manifest or config blob read into memory.
_MAX_DOCUMENT = 4 << 20

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))')
_ACCEPT = (
    MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    DOCKER_LIST_MEDIA_TYPE,
)


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


class RegistryClient:
    """One repository of one registry, spoken to over HTTP(S) (see the module docstring)."""

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

    def error(
        self, message: str, *, kind: Kind = Kind.OTHER, hint: str | None = None
    ) -> RegistryError:
        """An ``RegistryError`` about this registry, scrubbed of the password."""
        if kind is Kind.AUTH and hint is None:
            hint = auth_hint(self.ref.registry)
        return RegistryError(
            self._scrub(message), kind=kind, hint=None if hint is None else self._scrub(hint)
        )

    def _failed(self, exc: requests.RequestException, what: str) -> RegistryError:
        transport = (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        )
        transient = isinstance(exc, transport) and not isinstance(exc, requests.exceptions.SSLError)
        return self.error(
            f"{self.ref.registry}: {what} failed: {exc}",
            kind=Kind.TRANSIENT if transient else Kind.OTHER,
        )

    def _refused(self, response: requests.Response, what: str) -> RegistryError:
        status = response.status_code
        detail = f"{status} {response.reason or ''}".strip()
        errors = _registry_errors(response)
        if errors:
            detail += f": {errors}"
        if kind_of_status(status) is Kind.AUTH:
            if self.credentials is None:
                message = f"{self.ref.registry} asks for credentials and none were found ({detail})"
            else:
                message = (
                    f"{self.ref.registry} refused the credentials of {self.credentials.username!r}"
                    f" while {what} ({detail})"
                )
            return self.error(message, kind=Kind.AUTH)
        return self.error(
            f"{self.ref.registry}: {what} failed: {detail}", kind=kind_of_status(status)
        )

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

    def get_manifest(
        self, *, missing_ok: bool = False, target: str | None = None
    ) -> tuple[bytes, str] | None:
        """The manifest's bytes and media type (``Content-Type`` when it names none).

        ``target`` is a tag or digest of this repository (default: the reference's). With
        ``missing_ok``, None when the registry has no such tag or digest.
        """
        target = target or self.ref.target
        response = self.request(
            "GET",
            f"{self.base}/manifests/{target}",
            what=f"reading the manifest of {self.ref.registry}/{self.ref.repository}:{target}",
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
                f"{self.ref.registry}: the manifest of {target} does not match the digest "
                f"{stored} the registry gave for it"
            )
        return data, content_type

    def get_blob(self, digest: str) -> bytes:
        """A small blob (a config) read whole, checked against its digest."""
        response = self.request(
            "GET",
            f"{self.base}/blobs/{digest}",
            what=f"reading blob {digest}",
            ok=(200,),
            stream=True,
        )
        with contextlib.closing(response):
            data = response.raw.read(_MAX_DOCUMENT + 1, decode_content=True)
        if len(data) > _MAX_DOCUMENT:
            raise self.error(f"{self.ref.registry}: blob {digest} is too big to be a config")
        if sha256_digest(data) != digest:
            raise self.error(f"{self.ref.registry}: blob {digest} does not match its digest")
        return bytes(data)

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


def open_client(
    reference: str | Reference,
    *,
    given: Credentials | None = None,
    plain_http: bool | None = None,
) -> RegistryClient:
    """A client for the repository of ``reference``, with its registry's credentials."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    found = given if given is not None else credentials(ref.registry)
    return RegistryClient(ref, found, plain_http=plain_http)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A manifest as the registry serves it, and the image config it names (if any)."""

    reference: str
    digest: str
    media_type: str
    document: Mapping[str, Any]
    config: Mapping[str, Any] | None


def parse_manifest(ref: Reference, data: bytes, content_type: str) -> tuple[Any, str]:
    """The manifest as JSON and its media type (its own ``mediaType``, else Content-Type)."""
    try:
        manifest = json.loads(data)
    except ValueError:
        raise RegistryError(f"{ref}: the registry's manifest is not JSON") from None
    media_type = str(
        (manifest.get("mediaType") if isinstance(manifest, dict) else None) or content_type
    )
    return manifest, media_type


def manifest_digest(
    reference: str, *, note: Callable[[str], None], sleep: Callable[[float], None]
) -> str | None:
    """The digest of the manifest at ``reference``; None when the registry has no such tag.

    One manifest read (no blob): how ``build --pull-from`` learns whether an image is there
    before it asks the engine to pull it.
    """
    ref = parse_reference(reference)
    with open_client(ref) as client:
        found = retrying(lambda: client.get_manifest(missing_ok=True), note, sleep)
    return None if found is None else sha256_digest(found[0])


def remote_manifest(
    reference: str,
    *,
    architecture: str = "amd64",
    note: Callable[[str], None],
    sleep: Callable[[float], None],
) -> Manifest | None:
    """The manifest (and config) at ``reference``; None when the registry has no such tag.

    For an image index, the digest is the index's (what a tag pins) and the config is that of
    its ``linux/<architecture>`` image.
    """
    ref = parse_reference(reference)
    with open_client(ref) as client:
        found = retrying(lambda: client.get_manifest(missing_ok=True), note, sleep)
        if found is None:
            return None
        data, content_type = found
        document, media_type = parse_manifest(ref, data, content_type)
        image = document
        if media_type in INDEX_MEDIA_TYPES:
            chosen = next(
                (
                    m
                    for m in document.get("manifests") or []
                    if (m.get("platform") or {}).get("os") == "linux"
                    and (m.get("platform") or {}).get("architecture") == architecture
                ),
                None,
            )
            image = {}
            if chosen is not None:
                inner = Reference(ref.registry, ref.repository, ref.tag, str(chosen["digest"]))
                with open_client(inner, given=client.credentials) as other:
                    got = retrying(other.get_manifest, note, sleep)
                assert got is not None  # noqa: S101 - a missing manifest raised
                image, _ = parse_manifest(inner, *got)
        config = None
        descriptor = image.get("config") if isinstance(image, dict) else None
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
            blob = retrying(lambda: client.get_blob(str(descriptor["digest"])), note, sleep)
            try:
                loaded = json.loads(blob)
            except ValueError:
                loaded = None
            config = loaded if isinstance(loaded, dict) else None
    return Manifest(
        reference=str(ref),
        digest=sha256_digest(data),
        media_type=media_type,
        document=document if isinstance(document, dict) else {},
        config=config,
    )
