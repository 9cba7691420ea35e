"""Pure parts of the ORAS client: references, the SIF manifest, credentials, errors (no network)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
import requests

from hepml_images import hashing, oras
from hepml_images import registry as reg
from hepml_images.errors import HepmlError
from hepml_images.hashing import sha256_digest
from hepml_images.registry import http as registry_http
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from pathlib import Path

DIGEST = "sha256:" + "ab" * 32
#: The empty config's digest as Apptainer hard-codes it (internal/pkg/client/oras/config.go).
APPTAINER_EMPTY_CONFIG_DIGEST = (
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "oras://127.0.0.1:5000/hepml/tf:1.0",
            reg.Reference("127.0.0.1:5000", "hepml/tf", "1.0"),
        ),
        ("127.0.0.1:5000/hepml/tf", reg.Reference("127.0.0.1:5000", "hepml/tf", "latest")),
        ("localhost/x:y", reg.Reference("localhost", "x", "y")),
        ("[::1]:5000/a/b:c", reg.Reference("[::1]:5000", "a/b", "c")),
        ("oras://alpine", reg.Reference("docker.io", "library/alpine", "latest")),
        (
            "user/collection/container:2.0.0",
            reg.Reference("docker.io", "user/collection/container", "2.0.0"),
        ),
        ("index.docker.io/alpine:3", reg.Reference("docker.io", "library/alpine", "3")),
        (
            f"registry.local/c/image@{DIGEST}",
            reg.Reference("registry.local", "c/image", None, DIGEST),
        ),
        (
            f"//registry.local:443/c/image:t@{DIGEST}",
            reg.Reference("registry.local:443", "c/image", "t", DIGEST),
        ),
    ],
)
def test_references_parse_like_apptainer(text: str, expected: reg.Reference) -> None:
    assert oras.parse_reference(text) == expected


def test_reference_target_string_and_api_host() -> None:
    tagged = oras.parse_reference("127.0.0.1:5000/hepml/tf:1.0")
    assert tagged.target == "1.0"
    assert str(tagged) == "127.0.0.1:5000/hepml/tf:1.0"
    assert tagged.api_host == "127.0.0.1:5000"
    pinned = oras.parse_reference(f"127.0.0.1:5000/hepml/tf:1.0@{DIGEST}")
    assert pinned.target == DIGEST
    assert str(pinned) == f"127.0.0.1:5000/hepml/tf:1.0@{DIGEST}"
    assert oras.parse_reference("alpine").api_host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:5000/Hepml/tf:1", "repository"),
        ("127.0.0.1:5000/hepml//tf:1", "repository"),
        ("127.0.0.1:5000/hepml/tf:bad tag", "tag"),
        ("127.0.0.1:5000/hepml/tf:.dot", "tag"),
        ("127.0.0.1:5000/hepml/tf@sha256:abc", "digest"),
        ("127.0.0.1:5000/hepml/tf@md5:" + "a" * 32, "digest"),
        ("bad_host.example.org/x:y", "registry"),
        ("", "repository"),
    ],
)
def test_invalid_references_are_refused_with_a_hint(text: str, problem: str) -> None:
    with pytest.raises(reg.RegistryError, match=problem) as caught:
        oras.parse_reference(text)
    assert caught.value.hint is not None
    assert "HOST[:PORT]/REPOSITORY[:TAG]" in caught.value.hint


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("localhost:5000", True),
        ("LOCALHOST", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("10.0.0.1:5000", False),
        ("128.0.0.1", False),
        ("registry.example.org", False),
        ("localhost.example.org:5000", False),
        ("[2001:db8::1]:5000", False),
    ],
)
def test_loopback_registries(registry: str, loopback: bool) -> None:
    assert reg.is_loopback(registry) is loopback


@pytest.mark.parametrize(
    ("reference", "plain_http", "scheme"),
    [
        ("127.0.0.1:5000/x", None, "http"),
        ("localhost/x", None, "http"),
        ("[::1]:5000/x", None, "http"),
        ("registry.example.org/x", None, "https"),
        ("127.0.0.1:5000/x", False, "https"),
        ("registry.example.org/x", True, "http"),
    ],
)
def test_plain_http_only_for_loopback_unless_told(
    reference: str, plain_http: bool | None, scheme: str
) -> None:
    ref = oras.parse_reference(reference)
    with registry_http.RegistryClient(ref, None, plain_http=plain_http) as client:
        assert client.base == f"{scheme}://{ref.api_host}/v2/x"
        # the loopback registry is never reached through a proxy from the environment
        assert client.session.trust_env is not reg.is_loopback(ref.registry)


def test_empty_config_is_apptainers() -> None:
    assert oras.EMPTY_CONFIG == b"{}"
    assert oras.EMPTY_CONFIG_DIGEST == APPTAINER_EMPTY_CONFIG_DIGEST


def test_sif_manifest_has_apptainers_layout() -> None:
    created = datetime(2023, 12, 19, 16, 2, 14, 999, tzinfo=timezone.utc)
    manifest = oras.sif_manifest(
        DIGEST, 1234, "x.sif", created=created, annotations={"org.example.a": "b"}
    )
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.sylabs.sif.config.v1+json",
            "size": 2,
            "digest": APPTAINER_EMPTY_CONFIG_DIGEST,
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": "application/vnd.sylabs.sif.layer.v1.sif",
                "size": 1234,
                "digest": DIGEST,
                "annotations": {"org.opencontainers.image.title": "x.sif"},
            }
        ],
        "annotations": {
            "org.example.a": "b",
            "org.opencontainers.image.created": "2023-12-19T16:02:14Z",
        },
    }
    assert "artifactType" not in manifest
    # the order Apptainer (go-containerregistry's structs) writes the keys in
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers", "annotations"]
    assert list(manifest["config"]) == ["mediaType", "size", "digest", "data"]
    assert base64.b64decode(manifest["config"]["data"]) == oras.EMPTY_CONFIG


def test_created_cannot_be_overridden_by_annotations() -> None:
    created = datetime(2024, 1, 1, tzinfo=timezone.utc)
    manifest = oras.sif_manifest(
        DIGEST, 1, "x.sif", created=created, annotations={oras.CREATED_ANNOTATION: "never"}
    )
    assert manifest["annotations"] == {oras.CREATED_ANNOTATION: "2024-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 3, 1, 12, 0, 0), "2024-03-01T12:00:00Z"),  # noqa: DTZ001 - naive is UTC
        (
            datetime(2024, 3, 1, 13, 30, 5, tzinfo=timezone(timedelta(hours=1))),
            "2024-03-01T12:30:05Z",
        ),
    ],
)
def test_rfc3339_is_utc_whole_seconds(moment: datetime, text: str) -> None:
    assert rfc3339(moment) == text


def test_encoded_manifest_is_compact_json_and_its_digest() -> None:
    manifest = oras.sif_manifest(
        DIGEST, 1, "é.sif", created=datetime(2024, 1, 1, tzinfo=timezone.utc)
    )
    data = oras.encode_manifest(manifest)
    assert b" " not in data
    assert "é.sif".encode() in data
    assert json.loads(data) == manifest
    assert sha256_digest(data) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_file_digest_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "BLOCK", 7)
    data = bytes(range(256)) * 3 + b"tail"
    path = tmp_path / "x.sif"
    path.write_bytes(data)
    reads: list[int] = []
    real_open = type(path).open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        stream = real_open(self, *args, **kwargs)
        real_read = stream.read

        def read(size: int = -1) -> bytes:
            reads.append(size)
            return bytes(real_read(size))

        stream.read = read
        return stream

    monkeypatch.setattr(type(path), "open", counting_open)
    assert oras.file_digest(path) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert reads
    assert set(reads) == {7}


def test_file_digest_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(reg.RegistryError, match="cannot read"):
        oras.file_digest(tmp_path / "missing.sif")


def test_oras_error_is_a_hepml_error_with_a_kind() -> None:
    error = oras.OrasError("it broke", hint="try again")
    assert isinstance(error, HepmlError)
    assert isinstance(error, reg.RegistryError)
    assert error.kind == "other"
    assert error.hint == "try again"
    assert str(error) == "it broke\n  hint: try again"
    assert oras.OrasError("down", kind=reg.Kind.TRANSIENT).kind == "transient"


def test_credentials_keep_the_password_out_of_repr() -> None:
    credentials = reg.Credentials("user", "s3cret-pw")
    assert "s3cret-pw" not in repr(credentials)
    assert "s3cret-pw" not in repr(registry_http._Authorization())


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials in the environment, an empty Docker configuration directory."""
    monkeypatch.delenv(reg.USER_ENV, raising=False)
    monkeypatch.delenv(reg.PASSWORD_ENV, raising=False)
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


def test_credentials_from_the_environment_come_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _isolate(monkeypatch, tmp_path)
    auth = base64.b64encode(b"docker-user:docker-pw").decode()
    (config / "config.json").write_text(json.dumps({"auths": {"h": {"auth": auth}}}))
    monkeypatch.setenv(reg.USER_ENV, "env-user")
    monkeypatch.setenv(reg.PASSWORD_ENV, "env-pw")
    assert reg.credentials("h") == reg.Credentials("env-user", "env-pw")


def test_credentials_from_docker_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _isolate(monkeypatch, tmp_path)
    assert reg.credentials("127.0.0.1:5000") is None
    auth = base64.b64encode(b"docker-user:docker-pw").decode()
    (config / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    assert reg.credentials("127.0.0.1:5000") == reg.Credentials("docker-user", "docker-pw")
    assert reg.credentials("other.example.org") is None


def test_credentials_from_a_credential_helper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _isolate(monkeypatch, tmp_path)
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        '[ "$server" = reg.example.org ] || exit 1\n'
        'echo \'{"Username": "helper-user", "Secret": "helper-pw"}\'\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helpers}:/usr/bin:/bin")
    (config / "config.json").write_text(json.dumps({"credHelpers": {"reg.example.org": "fake"}}))
    assert reg.credentials("reg.example.org") == reg.Credentials("helper-user", "helper-pw")
    (config / "config.json").write_text(json.dumps({"credHelpers": {"reg.example.org": "gone"}}))
    with pytest.raises(reg.RegistryError, match="docker-credential-gone is not on PATH"):
        reg.credentials("reg.example.org")


def test_credentials_need_both_parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv(reg.USER_ENV, "u")
    with pytest.raises(reg.RegistryError, match="is set but") as caught:
        reg.credentials("h")
    assert caught.value.hint is not None
    assert "docker login" in caught.value.hint


def _client(credentials: reg.Credentials | None = None) -> registry_http.RegistryClient:
    ref = oras.parse_reference("registry.example.org/hepml/x:1")
    return registry_http.RegistryClient(ref, credentials, plain_http=None)


def _response(status: int, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = b"" if body is None else json.dumps(body).encode()
    return response


def test_basic_challenge_is_answered_with_the_credentials() -> None:
    with _client(reg.Credentials("u", "p")) as client:
        client._answer(_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), "x")
        assert client.auth.value == "Basic " + base64.b64encode(b"u:p").decode()


def test_bearer_challenge_asks_the_realm_for_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []

    def get(url: str, **kwargs: Any) -> Any:
        asked.append({"url": url, **kwargs})
        return _response(200, body={"token": "tok"})

    challenge = (
        'Bearer realm="https://auth.example.org/token",service="registry.example.org",'
        'scope="repository:hepml/x:pull,push repository:hepml/y:pull"'
    )
    with _client(reg.Credentials("u", "p")) as client:
        monkeypatch.setattr(client.session, "get", get)
        client._answer(_response(401, {"WWW-Authenticate": challenge}), "x")
        assert client.auth.value == "Bearer tok"
    (call,) = asked
    assert call["url"] == "https://auth.example.org/token"
    assert call["params"] == [
        ("service", "registry.example.org"),
        ("scope", "repository:hepml/x:pull,push"),
        ("scope", "repository:hepml/y:pull"),
    ]
    assert call["auth"] == ("u", "p")


def test_a_challenge_without_credentials_is_an_auth_error() -> None:
    with _client() as client, pytest.raises(reg.RegistryError) as caught:
        client._answer(_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), "x")
    assert caught.value.kind == "auth"
    assert "registry.example.org asks for credentials" in caught.value.message
    assert caught.value.hint is not None
    assert "docker login registry.example.org" in caught.value.hint
    assert reg.PASSWORD_ENV in caught.value.hint


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, "auth"),
        (403, {"errors": [{"code": "DENIED", "message": "requested access is denied"}]}, "auth"),
        (500, None, "transient"),
        (503, None, "transient"),
        (429, None, "transient"),
        (404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, "other"),
        (400, {"errors": [{"code": "MANIFEST_INVALID", "message": "manifest invalid"}]}, "other"),
    ],
)
def test_refusals_are_classified(status: int, body: Any, kind: str) -> None:
    with _client(reg.Credentials("user", "pw-0123456789")) as client:
        error = client._refused(_response(status, body=body), "pushing")
    assert error.kind == kind
    assert "registry.example.org" in error.message
    if body is not None:
        assert body["errors"][0]["code"] in error.message


def test_connection_failures_are_transient() -> None:
    with _client() as client:
        refused = requests.ConnectionError("[Errno 111] Connection refused")
        assert client._failed(refused, "pushing").kind == "transient"
        assert client._failed(requests.Timeout("read timed out"), "pushing").kind == "transient"
        broken = requests.exceptions.SSLError("certificate verify failed")
        assert client._failed(broken, "pushing").kind == "other"


def test_errors_never_carry_the_password() -> None:
    with _client(reg.Credentials("u", "s3cret-pw")) as client:
        basic = base64.b64encode(b"u:s3cret-pw").decode()
        error = client.error(
            f"echoed s3cret-pw and Basic {basic}", hint="s3cret-pw", kind=reg.Kind.AUTH
        )
    assert "s3cret-pw" not in str(error)
    assert basic not in str(error)
    assert "s3cret-pw" not in repr(error)


def test_only_one_sif_layer_is_accepted() -> None:
    ref = oras.parse_reference("127.0.0.1:5000/x:y")
    layer = {"mediaType": oras.SIF_LAYER_MEDIA_TYPE, "digest": DIGEST, "size": 3}
    assert oras._sif_layer(ref, {"layers": [layer]}, registry_http.MANIFEST_MEDIA_TYPE) == layer
    proto = {**layer, "mediaType": "appliciation/vnd.sylabs.sif.layer.tar"}
    assert oras._sif_layer(ref, {"layers": [proto]}, registry_http.MANIFEST_MEDIA_TYPE) == proto
    with pytest.raises(reg.RegistryError, match="image index"):
        oras._sif_layer(ref, {"manifests": []}, registry_http.INDEX_MEDIA_TYPE)
    with pytest.raises(reg.RegistryError, match="2 layers"):
        oras._sif_layer(ref, {"layers": [layer, layer]}, registry_http.MANIFEST_MEDIA_TYPE)
    tar = {**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar"}
    with pytest.raises(reg.RegistryError, match="not a SIF artifact"):
        oras._sif_layer(ref, {"layers": [tar]}, registry_http.MANIFEST_MEDIA_TYPE)
    with pytest.raises(reg.RegistryError, match="not a sha256 digest"):
        oras._sif_layer(
            ref, {"layers": [{**layer, "digest": "md5:x"}]}, registry_http.MANIFEST_MEDIA_TYPE
        )


def test_push_refuses_a_digest_reference_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.sif"
    path.write_bytes(b"sif")
    with pytest.raises(reg.RegistryError, match="names a tag, not a digest"):
        oras.push_sif(path, f"127.0.0.1:1/x@{DIGEST}", credentials=None)
    with pytest.raises(reg.RegistryError, match="is not a file"):
        oras.push_sif(tmp_path / "missing.sif", "127.0.0.1:1/x:y", credentials=None)
