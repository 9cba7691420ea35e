"""The ``registry`` fixture is a real registry: the engine pushes to it and pulls from it.

The image is a one-file tar imported into the engine (no base image, no network), tagged
``hepml-test/registry-fixture:<random>`` so that parallel sessions on the same engine do not
remove each other's images. The push stream is checked for ``error``: docker-py does not raise
on errors reported inside the stream.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
import urllib.error
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

REPO = "hepml-test/registry-fixture"
#: What dockerd 20.10 reports in the push stream: wrong credentials, a registry that is down.
AUTH_ERROR = "unauthorized: authentication required"
NO_AUTH_ERROR = "no basic auth credentials"
DOWN_ERROR = "connect: connection refused"  # in 'Get "http://HOST/v2/": dial tcp HOST: ...'


def _one_file_tar(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_image(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """``(image ID, tag)`` of a tiny imported image; removed (every reference) afterwards."""
    import docker.errors

    tag = secrets.token_hex(6)
    docker_client.api.import_image_from_data(
        _one_file_tar(f"hepml-test {tag}\n".encode()), repository=REPO, tag=tag
    )
    image_id = docker_client.images.get(f"{REPO}:{tag}").id
    assert image_id is not None
    yield image_id, tag
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.images.remove(image_id, force=True)


def _push(
    client: docker.DockerClient, registry: Registry, tag: str, auth: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Push ``REGISTRY/REPO:TAG``: the stream and the errors in it."""
    stream: list[dict[str, Any]] = list(
        client.images.push(
            f"{registry.host}/{REPO}", tag=tag, auth_config=auth, stream=True, decode=True
        )
    )
    return stream, [str(item["error"]) for item in stream if "error" in item]


def _pushed_digest(stream: list[dict[str, Any]]) -> str:
    digests = [item["aux"]["Digest"] for item in stream if "Digest" in item.get("aux", {})]
    assert len(digests) == 1, stream
    return str(digests[0])


def test_push_and_pull_by_digest(
    docker_client: docker.DockerClient, registry: Registry, tiny_image: tuple[str, str]
) -> None:
    import docker.errors

    image_id, tag = tiny_image
    image = docker_client.images.get(image_id)
    assert image.tag(f"{registry.host}/{REPO}", tag)
    stream, errors = _push(docker_client, registry, tag, registry.auth_config())
    assert errors == []
    assert REPO in registry.catalog()
    assert registry.tags(REPO) == [tag]
    digest, manifest = registry.manifest(REPO, tag)
    assert digest == _pushed_digest(stream)
    assert manifest["config"]["digest"] == image_id
    assert registry.manifest(REPO, digest) == (digest, manifest)

    # Nothing of it left locally: the pull below really comes from the registry.
    docker_client.images.remove(image_id, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)
    pulled = docker_client.images.pull(
        f"{registry.host}/{REPO}@{digest}", auth_config=registry.auth_config()
    )
    assert pulled.id == image_id
    assert f"{registry.host}/{REPO}@{digest}" in pulled.attrs["RepoDigests"]
    assert pulled.tag(REPO, tag)  # back as it was, for the other tests


def test_wrong_password_is_refused(
    docker_client: docker.DockerClient, registry: Registry, tiny_image: tuple[str, str]
) -> None:
    image_id, tag = tiny_image
    assert docker_client.images.get(image_id).tag(f"{registry.host}/{REPO}", tag)
    wrong = {**registry.auth_config(), "password": "not-" + registry.password}
    _, errors = _push(docker_client, registry, tag, wrong)
    assert errors == [AUTH_ERROR]
    no_auth = {"username": "", "password": "", "serveraddress": registry.host}
    _, errors = _push(docker_client, registry, tag, no_auth)
    assert errors == [NO_AUTH_ERROR]


def test_password_stays_secret(registry: Registry) -> None:
    assert registry.password not in repr(registry)
    assert registry.password not in registry.log.read_text(errors="replace")
    for path in registry.root.iterdir():
        if path.is_file():
            assert registry.password not in path.read_text(errors="replace"), path


def test_stop_then_start_keeps_the_storage(
    docker_client: docker.DockerClient, registry: Registry, tiny_image: tuple[str, str]
) -> None:
    image_id, tag = tiny_image
    assert docker_client.images.get(image_id).tag(f"{registry.host}/{REPO}", tag)
    stream, errors = _push(docker_client, registry, tag, registry.auth_config())
    assert errors == []
    digest = _pushed_digest(stream)

    registry.stop()
    try:
        assert not registry.running()
        _, errors = _push(docker_client, registry, tag, registry.auth_config())
        assert len(errors) == 1, errors
        assert DOWN_ERROR in errors[0]
        assert registry.host in errors[0]
        with pytest.raises(urllib.error.URLError):
            registry.catalog()
    finally:
        registry.start()

    assert registry.running()
    assert REPO in registry.catalog()
    assert registry.tags(REPO) == [tag]
    assert registry.manifest(REPO, tag)[0] == digest
    stream, errors = _push(docker_client, registry, tag, registry.auth_config())
    assert errors == []
    assert _pushed_digest(stream) == digest
