"""Reproducible images, for real: the same spec built twice gives the same image, and ``verify``
rebuilds an image from what it carries and says where one that was changed differs.

A user's spec (written into a temporary directory) on the bootstrapped debian-base: an apt step
and a COPY, built with the default backend (BuildKit where there is buildx).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import by_key, cli, run

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

SPEC = """\
name: t-verify
extends: debian-base
description: verify's test image
version: "1.0.0"
components:
  system-packages:
    packages: [jq]
env:
  TEST_RUN: "{run}"
smoke:
  - name: jq runs
    run: jq --version
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "t-verify.yaml"
    path.write_text(SPEC.format(run=uuid.uuid4().hex[:12]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(spec: Path, state: Path, docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """(content ref, image ID) of the spec built from scratch; removed at the end."""
    assert cli(state, "build", "debian-base", "--no-test").code == 0
    done = cli(state, "build", str(spec), "--no-cache", "--json")
    assert done.code == 0, done.stderr[-4000:]
    image = by_key(done.json()["builds"])["t-verify:default"]
    yield str(image["image"]), str(image["image_id"])
    for found in docker_client.images.list(name="hepml/t-verify"):
        docker_client.images.remove(str(found.id), force=True)


def test_the_same_spec_built_twice_is_the_same_image(
    built: tuple[str, str], spec: Path, state: Path
) -> None:
    """Without cache both times, the base up to date: the same image ID (canonical rewrite)."""
    _, first = built
    again = cli(state, "build", str(spec), "--no-cache", "--no-test", "--json")
    assert again.code == 0, again.stderr[-4000:]
    builds = by_key(again.json()["builds"])
    assert builds["t-verify:default"]["state"] == "built"
    assert builds["t-verify:default"]["image_id"] == first


def test_verify_passes_on_the_image(built: tuple[str, str], spec: Path, state: Path) -> None:
    ref, image_id = built
    done = cli(state, "verify", ref, "--specs", str(spec.parent), "--json")
    assert done.code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = done.json()
    assert verdict["identical"] is True
    assert verdict["image_id"] == verdict["rebuilt_id"] == image_id
    assert all(layer["identical"] for layer in verdict["layers"])


def _tampered(client: docker.DockerClient, image_id: str, path: str) -> str:
    """The image with one file of its top layer changed (same labels); its reference."""
    data = b"".join(client.api.get_image(image_id))
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        (entry,) = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(outer.extractfile(entry["Config"]))  # type: ignore[arg-type]
        blobs = [outer.extractfile(name).read() for name in entry["Layers"]]  # type: ignore[union-attr]
    top = blobs[-1]
    changed = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(top)) as source,
        tarfile.open(fileobj=changed, mode="w", format=tarfile.PAX_FORMAT) as target,
    ):
        for member in source.getmembers():
            content = source.extractfile(member) if member.isfile() else None
            if member.name.removeprefix("./") == path:
                body = content.read() + b"# changed\n"  # type: ignore[union-attr]
                member.size = len(body)
                content = io.BytesIO(body)
            target.addfile(member, content)
    layer = changed.getvalue()
    config["rootfs"]["diff_ids"][-1] = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    raw = json.dumps(config).encode()
    reference = f"hepml-tampered/t-verify:{uuid.uuid4().hex[:8]}"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as out:
        names = []
        for number, blob in enumerate([*blobs[:-1], layer]):
            names.append(f"{number}/layer.tar")
            info = tarfile.TarInfo(names[-1])
            info.size = len(blob)
            out.addfile(info, io.BytesIO(blob))
        manifest = json.dumps([{"Config": "c.json", "RepoTags": [reference], "Layers": names}])
        for name, blob in (("c.json", raw), ("manifest.json", manifest.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            out.addfile(info, io.BytesIO(blob))
    client.api.load_image(archive.getvalue())
    return reference


def test_verify_names_the_one_file_that_was_changed(
    built: tuple[str, str], spec: Path, state: Path, docker_client: docker.DockerClient
) -> None:
    _, image_id = built
    reference = _tampered(docker_client, image_id, ".hepml/os-packages.txt")
    try:
        done = cli(state, "verify", reference, "--specs", str(spec.parent))
        assert done.code == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert "/.hepml/os-packages.txt: differs in size, sha256" in done.stdout, done.stdout
        assert "different: 1 of" in done.stdout
        assert "the rebuild of" in done.stderr
        changed = [line for line in done.stdout.splitlines() if line.startswith("  /")]
        assert changed == ["  /.hepml/os-packages.txt: differs in size, sha256"], changed
    finally:
        docker_client.images.remove(reference, force=True)


def test_verify_passes_on_the_published_image_from_the_registry(
    built: tuple[str, str],
    spec: Path,
    state: Path,
    registry: Registry,
    docker_client: docker.DockerClient,
) -> None:
    ref, _ = built
    target = f"{registry.host}/hepml-verify"
    published = run(state, "publish", str(spec), "--registry", target, "--json", registry=registry)
    assert published.code == 0, published.stderr[-3000:]
    tag = ref.rsplit(":", 1)[1]
    remote = f"{target}/t-verify:{tag}"
    # only in the registry: what the engine has of it goes (the tested image stays)
    subprocess.run(["docker", "rmi", remote, f"{ref}-tested"], capture_output=True, check=False)
    done = run(state, "verify", remote, "--specs", str(spec.parent), "--json", registry=registry)
    assert done.code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = done.json()
    assert verdict["identical"] is True
    assert "pulling" in done.stderr
    del docker_client
