"""OCI registries, once: references, credentials, error classes, retries and the tag policy.

Everything that reaches a registry goes through here: ``publish`` (images, pushed by the
engine), ``oras`` (SIF artifacts), ``inspect --remote`` and ``ducc-wishlist`` (manifests read
over the registry API by ``registry.http``).

- **References**: ``[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`` with Docker's defaults (Docker Hub,
  ``library/``, ``latest``), validated against the distribution grammar.
- **Credentials**, in order: ``HEPML_REGISTRY_USER``/``HEPML_REGISTRY_PASSWORD``, then what
  ``docker login`` stored (``credHelpers``, ``credsStore`` through ``docker-credential-*``, or
  ``auths``). The password stays out of every ``repr``, message and log record.
- **Errors** are classified by HTTP status (401/403: authentication; 408, 429, 5xx: transient)
  and by exception type (connection failures: transient). Only the engine's push stream, which
  carries nothing but text, is classified by its words.
- **Retries**: transient failures are tried again after 1, 2, 4 and 8 s and said so.
- **The tag policy**: one rule for images and SIF artifacts alike (``tag_action``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from hepml_images.errors import HepmlError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hepml_images.engine import EngineError

T = TypeVar("T")
USER_ENV = "HEPML_REGISTRY_USER"
PASSWORD_ENV = "HEPML_REGISTRY_PASSWORD"  # noqa: S105 - the variable's name, not a password
REGISTRY_ENV = "HEPML_REGISTRY"
#: ``build --pull-from`` / ``--push-cache``: the cache namespace of content-tagged images
PULL_FROM_ENV = "HEPML_PULL_FROM"
PUSH_CACHE_ENV = "HEPML_PUSH_CACHE"
#: Waits between attempts of a transient failure (seconds): five attempts in about 15 s.
BACKOFF = (1.0, 2.0, 4.0, 8.0)
DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
#: The keys ``docker login`` has used for Docker Hub in its configuration.
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", DOCKER_HUB_API)
#: Seconds a credential helper may take.
_HELPER_TIMEOUT_S = 30

_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")

#: What the engine's push stream says (text only) for a refused login, and for faults worth
#: another try; every other source of errors is classified by status and exception type.
_ENGINE_AUTH = ("unauthorized", "authentication required", "no basic auth credentials", "denied")
_ENGINE_TRANSIENT = (
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


class Kind(str, Enum):
    """What a registry failure is, for what to do next."""

    AUTH = "auth"
    TRANSIENT = "transient"
    OTHER = "other"


class RegistryError(HepmlError):
    """A registry request failed; ``kind`` says whether to log in, retry or give up."""

    def __init__(self, message: str, *, kind: Kind = Kind.OTHER, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


def kind_of_status(status: int) -> Kind:
    """The kind of an HTTP status: 401/403 authentication, 408/429/5xx transient."""
    if status in {401, 403}:
        return Kind.AUTH
    if status in {408, 429} or 500 <= status < 600:  # noqa: PLR2004 - the 5xx range
        return Kind.TRANSIENT
    return Kind.OTHER


def kind_of_engine_error(exc: EngineError) -> Kind:
    """The kind of an engine failure: by status or transport, else by the stream's words."""
    if exc.transport:
        return Kind.TRANSIENT
    text = exc.message.lower()
    if any(word in text for word in _ENGINE_AUTH):
        return Kind.AUTH
    if any(word in text for word in _ENGINE_TRANSIENT):
        return Kind.TRANSIENT
    if exc.status is not None and exc.status != 500:  # noqa: PLR2004 - the engine's own 500
        return kind_of_status(exc.status)
    return Kind.OTHER


def auth_hint(registry: str) -> str:
    """What to do when a registry refuses us."""
    return f"`docker login {registry}`, or set {USER_ENV} and {PASSWORD_ENV}"


def retrying(
    action: Callable[[], T],
    note: Callable[[str], None],
    sleep: Callable[[float], None],
) -> T:
    """Run ``action``; on a transient failure wait and try again, up to ``len(BACKOFF)`` times."""
    for attempt, delay in enumerate(BACKOFF, start=1):
        try:
            return action()
        except RegistryError as exc:  # noqa: PERF203 - a retry loop
            if exc.kind is not Kind.TRANSIENT:
                raise
            note(f"{exc.message} — retrying in {delay:.0f} s (attempt {attempt})")
            sleep(delay)
    return action()


# --- references -----------------------------------------------------------------------------


def registry_of(repository: str) -> str:
    """The registry host of a repository reference (Docker Hub when it has none)."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


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


def parse_reference(text: str, *, scheme: str = "") -> Reference:
    """Parse ``[SCHEME://]REF`` as Docker and Apptainer do: Docker Hub and ``latest`` by default.

    A malformed reference is a ``RegistryError`` saying which part is wrong.
    """
    rest = text.strip()
    if scheme:
        rest = rest.removeprefix(f"{scheme}://").removeprefix("//")
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
    elif digest and not DIGEST.fullmatch(digest):
        problem = f"the digest {digest!r} is not sha256:<64 lower-case hex digits>"
    if problem is not None:
        prefix = f"[{scheme}://]" if scheme else ""
        raise RegistryError(
            f"invalid {scheme.upper() + ' ' if scheme else ''}reference {text!r}: {problem}",
            hint=f"write it as {prefix}HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]",
        )
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest or None)


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)

    def auth_config(self, registry: str) -> dict[str, str]:
        """The engine's form (``auth_config`` of a push)."""
        return {"username": self.username, "password": self.password, "serveraddress": registry}


def docker_config_path(env: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def credentials(registry: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials for ``registry`` (None: anonymous); see the module docstring.

    A half-set pair of environment variables is an error rather than a silent anonymous try.
    """
    env = os.environ if env is None else env
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user and password:
        return Credentials(user, password)
    if user or password:
        given, absent = (USER_ENV, PASSWORD_ENV) if user else (PASSWORD_ENV, USER_ENV)
        raise RegistryError(
            f"{given} is set but {absent} is not", kind=Kind.AUTH, hint=auth_hint(registry)
        )
    return _docker_login(registry, env)


def _config_keys(registry: str) -> tuple[str, ...]:
    if registry in {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API}:
        return _HUB_KEYS
    return (registry, f"https://{registry}", f"http://{registry}")


def _docker_login(registry: str, env: Mapping[str, str]) -> Credentials | None:
    """What ``docker login`` stored for ``registry``: helper, store, or the config's ``auths``."""
    path = docker_config_path(env)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"cannot read the Docker configuration {path}: {type(exc).__name__}",
            kind=Kind.AUTH,
            hint="fix or remove it, or set the credentials in the environment",
        ) from None
    if not isinstance(config, dict):
        return None
    keys = _config_keys(registry)
    helpers = config.get("credHelpers")
    helpers = helpers if isinstance(helpers, dict) else {}
    auths = config.get("auths")
    auths = auths if isinstance(auths, dict) else {}
    for key in keys:
        helper = helpers.get(key)
        if isinstance(helper, str) and helper:
            return _from_helper(helper, key, registry)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        for key in keys:
            found = _from_helper(store, key, registry, missing_ok=True)
            if found is not None:
                return found
    for key in keys:
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                pair = base64.b64decode(str(entry["auth"])).decode()
            except ValueError:
                continue
            user, sep, password = pair.partition(":")
            if sep and user and password:
                return Credentials(user, password)
    return None


def _from_helper(
    helper: str, server: str, registry: str, *, missing_ok: bool = False
) -> Credentials | None:
    """Ask ``docker-credential-HELPER get`` for ``server``'s credentials."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        if missing_ok:
            return None
        raise RegistryError(
            f"the Docker configuration names the credential helper {helper!r} for {registry},"
            f" but docker-credential-{helper} is not on PATH",
            kind=Kind.AUTH,
            hint=auth_hint(registry),
        )
    try:
        done = subprocess.run(  # noqa: S603 - a helper named by the user's Docker config
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryError(
            f"docker-credential-{helper} failed for {registry}: {type(exc).__name__}",
            kind=Kind.AUTH,
            hint=auth_hint(registry),
        ) from None
    if done.returncode != 0:
        return None  # "credentials not found in native keychain": none stored for this key
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        return None
    user, secret = answer.get("Username"), answer.get("Secret")
    if isinstance(user, str) and isinstance(secret, str) and user and secret:
        return Credentials(user, secret)
    return None


# --- the tag policy -------------------------------------------------------------------------


class TagAction(str, Enum):
    """What publishing does with one tag."""

    UP_TO_DATE = "already there"
    PUSH = "pushed"
    MOVE = "moved"
    REFUSE = "refused"


def tag_action(current: str | None, wanted: str, *, immutable: bool, force: bool) -> TagAction:
    """What to do with a tag that points at ``current`` (None: absent) and should be ``wanted``.

    One rule for images and SIF artifacts: a tag already at ``wanted`` is left alone, an absent
    one is pushed, a mutable one is moved, and an immutable one that holds something else is
    refused unless ``force``.
    """
    if current == wanted:
        return TagAction.UP_TO_DATE
    if current is None:
        return TagAction.PUSH
    if immutable and not force:
        return TagAction.REFUSE
    return TagAction.MOVE
