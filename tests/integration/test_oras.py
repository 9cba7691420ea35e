"""ORAS push and pull of SIF files against a real registry (``registry`` fixture, basic auth).

The file is a few MiB of random bytes named ``x.sif``: the protocol does not look inside it.
``skopeo`` (containers/image) is the independent client that reads back what was pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import subprocess
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import oras
from hepml_images import registry as reg
from hepml_images.hashing import sha256_digest
from hepml_images.registry import http as registry_http
from tests.conftest import require_tool

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

#: A little over three chunks, so that hashing, uploading and downloading go round their loops.
SIZE = 3 * registry_http.CHUNK_SIZE + 12345


def _repo() -> str:
    return f"hepml-test/oras-{secrets.token_hex(4)}"


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


@pytest.fixture
def sif(tmp_path: Path) -> Path:
    path = tmp_path / "x.sif"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without waiting (three attempts)."""
    monkeypatch.setattr(reg, "BACKOFF", (0.0, 0.0))


def test_push_then_pull_round_trip(registry: Registry, sif: Path, tmp_path: Path) -> None:
    repo = _repo()
    reference = f"oras://{registry.ref(repo, 'v1')}"
    pushed = oras.push_sif(sif, reference, credentials=registry.credentials())
    digest = _sha256(sif)
    assert pushed.reference == registry.ref(repo, "v1")
    assert pushed.layer_digest == digest
    assert pushed.size == SIZE
    assert pushed.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert pushed.config_media_type == "application/vnd.sylabs.sif.config.v1+json"
    assert pushed.layer_media_type == "application/vnd.sylabs.sif.layer.v1.sif"
    assert set(pushed.uploaded) == {digest, oras.EMPTY_CONFIG_DIGEST}

    back = tmp_path / "back" / "copy.sif"
    pulled = oras.pull_sif(reference, back, credentials=registry.credentials())
    assert pulled.path == back
    assert _sha256(back) == digest
    assert pulled.layer_digest == digest
    assert pulled.manifest_digest == pushed.manifest_digest
    assert pulled.size == SIZE
    assert pulled.media_type == pushed.media_type
    assert pulled.config_media_type == pushed.config_media_type
    assert pulled.layer_media_type == pushed.layer_media_type
    assert pulled.layer_annotations == {"org.opencontainers.image.title": "x.sif"}
    assert set(pulled.annotations) == {"org.opencontainers.image.created"}
    assert sorted(p.name for p in back.parent.iterdir()) == ["copy.sif"]  # no .part left

    # by digest, into a directory: the file takes the layer's title
    into = tmp_path / "into"
    into.mkdir()
    pinned = oras.pull_sif(
        f"{registry.host}/{repo}@{pushed.manifest_digest}",
        into,
        credentials=registry.credentials(),
    )
    assert pinned.path == into / "x.sif"
    assert _sha256(pinned.path) == digest


def test_registry_stores_apptainers_layout(registry: Registry, sif: Path) -> None:
    repo = _repo()
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    pushed = oras.push_sif(
        sif, registry.ref(repo, "v1"), credentials=registry.credentials(), created=created
    )
    digest, manifest = registry.manifest(repo, "v1")
    assert digest == pushed.manifest_digest
    assert registry.tags(repo) == ["v1"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert "artifactType" not in manifest
    assert manifest["config"] == {
        "mediaType": "application/vnd.sylabs.sif.config.v1+json",
        "size": 2,
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "data": "e30=",
    }
    assert manifest["layers"] == [
        {
            "mediaType": "application/vnd.sylabs.sif.layer.v1.sif",
            "size": SIZE,
            "digest": _sha256(sif),
            "annotations": {"org.opencontainers.image.title": "x.sif"},
        }
    ]
    assert manifest["annotations"] == {"org.opencontainers.image.created": "2024-05-06T07:08:09Z"}


def test_second_push_uploads_no_blob(registry: Registry, sif: Path) -> None:
    repo = _repo()
    created = datetime(2024, 1, 1, tzinfo=timezone.utc)
    auth = registry.credentials()
    first = oras.push_sif(sif, registry.ref(repo, "a"), credentials=auth, created=created)
    again = oras.push_sif(sif, registry.ref(repo, "a"), credentials=auth, created=created)
    other_tag = oras.push_sif(sif, registry.ref(repo, "b"), credentials=auth, created=created)
    assert first.uploaded
    assert again.uploaded == ()
    assert other_tag.uploaded == ()
    # a fixed creation time gives the same manifest for the same file
    assert first.manifest_digest == again.manifest_digest == other_tag.manifest_digest
    assert sorted(registry.tags(repo)) == ["a", "b"]


def test_wrong_password_names_the_registry_not_the_password(
    registry: Registry, sif: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{secrets.token_urlsafe(16)}"
    credentials = reg.Credentials(registry.username, wrong)
    with pytest.raises(reg.RegistryError) as pushing:
        oras.push_sif(sif, registry.ref(_repo(), "v1"), credentials=credentials)
    with pytest.raises(reg.RegistryError) as pulling:
        oras.pull_sif(registry.ref(_repo(), "v1"), tmp_path / "y.sif", credentials=credentials)
    for caught in (pushing, pulling):
        error = caught.value
        assert error.kind == "auth"
        assert f"{registry.host} refused the credentials" in error.message
        assert error.hint is not None
        assert reg.USER_ENV in error.hint
        assert reg.PASSWORD_ENV in error.hint
        assert f"docker login {registry.host}" in error.hint
        for text in (str(error), repr(error), repr(error.args)):
            assert wrong not in text
            assert registry.password not in text
    assert wrong not in caplog.text
    assert not (tmp_path / "y.sif").exists()


def test_no_credentials_at_all(
    registry: Registry, sif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(reg.USER_ENV, raising=False)
    monkeypatch.delenv(reg.PASSWORD_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # an empty Docker configuration
    with pytest.raises(reg.RegistryError) as caught:
        oras.push_sif(sif, registry.ref(_repo(), "v1"), credentials=None)
    assert caught.value.kind == "auth"
    assert f"{registry.host} asks for credentials and none were found" in caught.value.message


def test_credentials_from_the_environment(
    registry: Registry, sif: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(reg.USER_ENV, registry.username)
    monkeypatch.setenv(reg.PASSWORD_ENV, registry.password)
    pushed = oras.push_sif(sif, registry.ref(_repo(), "v1"), credentials=None)
    assert pushed.layer_digest == _sha256(sif)


@pytest.mark.usefixtures("no_backoff")
def test_registry_down_fails_after_retries(registry: Registry, sif: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    registry.stop()
    try:
        with pytest.raises(reg.RegistryError) as pushing:
            oras.push_sif(
                sif,
                registry.ref(_repo(), "v1"),
                credentials=registry.credentials(),
                note=notes.append,
            )
        with pytest.raises(reg.RegistryError) as pulling:
            oras.pull_sif(
                registry.ref(_repo(), "v1"),
                tmp_path / "y.sif",
                credentials=registry.credentials(),
                note=notes.append,
            )
    finally:
        registry.start()
    for caught in (pushing, pulling):
        assert caught.value.kind == "transient"
        assert registry.host in caught.value.message
        assert "Connection refused" in caught.value.message
        assert registry.password not in str(caught.value)
    # each call: two retries (len(BACKOFF)), then the failure
    assert len(notes) == 4
    assert all("retrying" in note for note in notes)


@pytest.mark.usefixtures("no_backoff")
def test_a_transient_failure_is_retried_and_the_push_completes(
    registry: Registry, sif: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry answers 503 to the first manifest PUT; the second attempt goes through."""
    real = registry_http.RegistryClient.put_manifest
    calls: list[str] = []

    def flaky(self: registry_http.RegistryClient, data: bytes, tag: str) -> str | None:
        calls.append(tag)
        if len(calls) == 1:
            raise oras.OrasError(
                f"{self.ref.registry}: 503 Service Unavailable", kind=reg.Kind.TRANSIENT
            )
        return real(self, data, tag)

    monkeypatch.setattr(registry_http.RegistryClient, "put_manifest", flaky)
    notes: list[str] = []
    repo = _repo()
    pushed = oras.push_sif(
        sif, registry.ref(repo, "v1"), credentials=registry.credentials(), note=notes.append
    )
    assert calls == ["v1", "v1"]
    assert len(notes) == 1
    assert registry.manifest(repo, "v1")[0] == pushed.manifest_digest


def _authfile(registry: Registry, tmp_path: Path) -> Path:
    """A containers-auth.json for skopeo: the password stays off its command line."""
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    path.chmod(0o600)
    return path


def test_skopeo_reads_what_was_pushed(registry: Registry, sif: Path, tmp_path: Path) -> None:
    """An independent OCI client sees the same manifest, and fetches the same layer."""
    skopeo = require_tool("skopeo")
    repo = _repo()
    pushed = oras.push_sif(sif, registry.ref(repo, "v1"), credentials=registry.credentials())
    authfile = _authfile(registry, tmp_path)
    source = f"docker://{registry.ref(repo, 'v1')}"
    common = ["--authfile", str(authfile), "--tls-verify=false"]
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", *common, source],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert sha256_digest(raw) == pushed.manifest_digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == registry_http.MANIFEST_MEDIA_TYPE
    assert manifest["config"]["mediaType"] == oras.SIF_CONFIG_MEDIA_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == oras.SIF_LAYER_MEDIA_TYPE
    assert layer["digest"] == pushed.layer_digest
    assert layer["annotations"] == {oras.TITLE_ANNOTATION: "x.sif"}

    copied = tmp_path / "copied"
    done = subprocess.run(
        [
            skopeo,
            "copy",
            "--src-authfile",
            str(authfile),
            "--src-tls-verify=false",
            source,
            f"dir:{copied}",
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    blob = copied / pushed.layer_digest.split(":", 1)[1]
    assert _sha256(blob) == _sha256(sif)
    assert (copied / oras.EMPTY_CONFIG_DIGEST.split(":", 1)[1]).read_bytes() == b"{}"


class _LyingRegistry(BaseHTTPRequestHandler):
    """Serves one SIF manifest whose layer blob is not what the manifest says."""

    manifest: bytes = b""
    blob: bytes = b""

    def do_GET(self) -> None:
        if "/manifests/" in self.path:
            body, kind = self.manifest, registry_http.MANIFEST_MEDIA_TYPE
        elif "/blobs/" in self.path:
            body, kind = self.blob, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def lying_registry() -> Iterator[str]:
    layer = b"the real SIF"
    manifest = oras.sif_manifest(
        sha256_digest(layer),
        len(layer),
        "x.sif",
        created=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    _LyingRegistry.manifest = oras.encode_manifest(manifest)
    _LyingRegistry.blob = b"a tampered SIF"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_layer_that_does_not_match_its_digest_is_not_kept(
    lying_registry: str, tmp_path: Path
) -> None:
    target = tmp_path / "x.sif"
    with pytest.raises(reg.RegistryError, match="does not match its manifest") as caught:
        oras.pull_sif(f"{lying_registry}/hepml/x:v1", target, credentials=None)
    assert caught.value.kind == "other"
    assert list(tmp_path.iterdir()) == []
