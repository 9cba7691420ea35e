"""The README's main job, for real: bootstrap → HDF5 → Python 3 → TensorFlow CPU, smoke-tested.

Slow (the first run downloads Debian packages and ~300 MB of wheels); everything else in the
integration suite builds small images on top of the same bootstrapped base.
"""

from __future__ import annotations

import io
import itertools
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import HOST_CA, buildkit_here, by_key, cli, leftovers

if TYPE_CHECKING:
    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

LADDER = (
    "debian-base:default",
    "debian-hdf5:default",
    "debian-python:default",
    "debian-tensorflow:cpu",
)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def first_build(docker_client: docker.DockerClient, state: Path) -> dict[str, object]:
    del docker_client  # requested for its check: no engine fails under CI
    run = cli(state, "build", "--json", "--junit", str(state / "junit.xml"))
    assert run.code == 0, run.stderr[-5000:]
    result: dict[str, object] = run.json()
    return result


def test_default_environment_builds_and_passes_its_smoke_tests(
    first_build: dict[str, object], docker_client: docker.DockerClient
) -> None:
    builds = by_key(first_build["builds"])  # type: ignore[arg-type]
    assert list(builds) == list(LADDER)
    assert all(b["state"] in {"built", "up to date"} for b in builds.values())
    tests = first_build["tests"]
    assert isinstance(tests, list)
    # every image of the ladder is tested (none has a stored result in this fresh state dir)
    assert [f"{t['spec']}:{t['variant']}" for t in tests] == list(LADDER)
    assert all(t["passed"] for t in tests), tests
    report = tests[-1]
    assert report["image_id"] == builds["debian-tensorflow:cpu"]["image_id"]
    checks = {c["name"]: c for c in report["checks"]}
    for name in (
        "Python is 3.11",
        "HDF5 tools report 1.10",
        "h5py uses HDF5 1.10",
        "TensorFlow 2.21.0 imports and computes",
        "uproot imports",
        "awkward imports",
        "tensorflow computes",
    ):
        assert checks[name]["status"] == "passed", checks[name]
    assert "HDF5 1.10." in checks["h5py uses HDF5 1.10"]["output"]
    # what this run built, BuildKit built (CI's set-up installs buildx on Docker Engine 28)
    if os.environ.get("CI") == "true" or buildkit_here():
        for key in LADDER[1:]:
            if builds[key]["state"] == "built":
                history = docker_client.api.history(builds[key]["image_id"])
                assert any(h.get("Comment") == "buildkit.dockerfile.v0" for h in history), key
    # every check ran in a throwaway container
    containers, _ = leftovers(docker_client)
    assert not any(
        "io.hepml.smoke" in (docker_client.api.inspect_container(c)["Config"]["Labels"] or {})
        for c in containers
    )


def test_results_are_tied_to_the_image_id(first_build: dict[str, object], state: Path) -> None:
    tests = first_build["tests"]
    assert isinstance(tests, list)
    image_id = tests[-1]["image_id"]
    stored = state / "results" / f"{image_id.removeprefix('sha256:')}.json"
    assert stored.exists()
    junit = (state / "junit.xml").read_text(encoding="utf-8")
    assert image_id in junit
    assert 'failures="0"' in junit


def test_second_build_skips_everything(
    first_build: dict[str, object], state: Path, docker_client: docker.DockerClient
) -> None:
    del first_build
    before = leftovers(docker_client)
    run = cli(state, "build", "--json", "--no-test")
    assert run.code == 0, run.stderr[-3000:]
    builds = by_key(run.json()["builds"])
    assert {b["state"] for b in builds.values()} == {"up to date"}
    assert "up to date" in run.stderr
    # with tests: the stored results for the same image IDs are used, nothing runs again
    run = cli(state, "build", "--json")
    assert run.code == 0, run.stderr[-3000:]
    assert run.json()["tests"] == []
    assert run.stderr.count("passed its smoke tests at") == len(LADDER)
    assert leftovers(docker_client) == before


def test_bootstrapped_base_is_reproducible(first_build: dict[str, object], state: Path) -> None:
    """Bootstrapping again from the same inputs (packages, epoch, commit) gives the same ID."""
    builds = by_key(first_build["builds"])  # type: ignore[arg-type]
    base = builds["debian-base:default"]

    def rebuild() -> str:
        run = cli(state, "build", "debian-base", "--no-cache", "--no-test", "--json")
        assert run.code == 0, run.stderr[-3000:]
        again = by_key(run.json()["builds"])["debian-base:default"]
        assert again["state"] == "built"
        return str(again["image_id"])

    first = rebuild()
    # the image from this run's first build has the same inputs; an older one may not (its
    # build labels name another commit), so then compare two fresh bootstraps
    reference = str(base["image_id"]) if base["state"] == "built" else rebuild()
    assert first == reference


def _push(client: docker.DockerClient, image_id: str, registry: Registry, repo: str) -> str:
    """Push one image to the registry under ``repo:tag``; the manifest digest it stored."""
    repository, tag = repo.rsplit(":", 1)
    client.api.tag(image_id, f"{registry.host}/{repository}", tag)
    for chunk in client.api.push(
        f"{registry.host}/{repository}",
        tag=tag,
        stream=True,
        decode=True,
        auth_config=registry.auth_config(),
    ):
        assert "error" not in chunk, chunk
    client.api.remove_image(f"{registry.host}/{repository}:{tag}")
    digest, _ = registry.manifest(repository, tag)
    return digest


def test_the_first_three_images_rebuild_to_the_same_images(
    first_build: dict[str, object],
    state: Path,
    registry: Registry,
    docker_client: docker.DockerClient,
) -> None:
    """Bootstrap → HDF5 → Python (h5py compiled) from scratch again, same epoch and locks:
    the same image IDs, and the same manifest digests in a registry (the canonical rewrite,
    docs/reproducibility.md). The TensorFlow image: bench/reproducible_ladder.py."""
    three = LADDER[:3]

    def rebuild() -> dict[str, str]:
        run = cli(state, "build", "debian-python", "--no-cache", "--no-test", "--json")
        assert run.code == 0, run.stderr[-3000:]
        builds = by_key(run.json()["builds"])
        assert [builds[k]["state"] for k in three] == ["built"] * 3
        return {k: str(builds[k]["image_id"]) for k in three}

    builds = by_key(first_build["builds"])  # type: ignore[arg-type]
    fresh = all(builds[k]["state"] == "built" for k in three)
    # this run's first build made them from scratch; images made earlier may carry another
    # commit in their labels, so then compare two fresh builds
    first = {k: str(builds[k]["image_id"]) for k in three} if fresh else rebuild()
    pushed = {
        k: _push(docker_client, first[k], registry, f"ladder/{k.split(':')[0]}:one") for k in three
    }
    second = rebuild()
    assert second == first
    again = {
        k: _push(docker_client, second[k], registry, f"ladder/{k.split(':')[0]}:two") for k in three
    }
    assert again == pushed


@pytest.mark.skipif(not HOST_CA.exists(), reason="no host CA bundle to pass")
def test_ca_bundle_leaves_no_trace(
    first_build: dict[str, object], docker_client: docker.DockerClient
) -> None:
    """The CA bundle was used for apt and pip in debian-python; nothing of it stays."""
    builds = by_key(first_build["builds"])  # type: ignore[arg-type]
    # by its content tag: a rebuild above may have replaced an image that an older commit made
    image = docker_client.images.get(builds["debian-python:default"]["image"])
    config = image.attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "APT_CONFIG"):
        assert name not in env
    assert not any("CERTIFICATE" in v for v in (config.get("Labels") or {}).values())
    for entry in image.history():
        assert "BEGIN CERTIFICATE" not in entry.get("CreatedBy", "")
    # no layer holds a file the CA prologue wrote
    archive = io.BytesIO()
    for chunk in image.save(named=False):
        archive.write(chunk)
    archive.seek(0)
    names: list[str] = []
    # classic (<id>/layer.tar) or OCI layout (blobs/sha256/…, Docker ≥ 25) archives alike
    with tarfile.open(fileobj=archive) as outer:
        for member in outer.getmembers():
            if member.isfile() and (member.name.endswith(".tar") or "blobs/" in member.name):
                layer = outer.extractfile(member)
                assert layer is not None
                try:
                    with tarfile.open(fileobj=io.BytesIO(layer.read()), mode="r:*") as inner:
                        names += inner.getnames()
                except tarfile.ReadError:
                    continue  # a configuration or manifest blob
    assert names, "the image has layers"
    assert not [n for n in names if "hepml-ca" in n or "hepml-build-deps" in n]
    # and no compiler stayed behind from the h5py build
    assert not [n for n in names if n.endswith("bin/x86_64-linux-gnu-gcc-12")]


def test_images_carry_their_resolved_spec_and_package_lists(
    first_build: dict[str, object], docker_client: docker.DockerClient
) -> None:
    builds = by_key(first_build["builds"])  # type: ignore[arg-type]
    tf = builds["debian-tensorflow:cpu"]
    output = docker_client.containers.run(
        str(tf["image_id"]),
        ["sh", "-c", "cat /.hepml/pip-freeze.txt /.hepml/os-packages.txt /.hepml/spec.json"],
        remove=True,
        network_disabled=True,
    ).decode()
    assert "tensorflow_cpu==2.21.0" in output  # pip freeze writes the wheel's name
    assert "h5py==3.14.0" in output
    assert "hdf5-tools\t1.10" in output
    assert '"name": "debian-tensorflow"' in output
    # and next to the build log
    log = tf["log"]
    if log is not None:  # built in this run (not up to date)
        beside = Path(str(log)).with_suffix("")
        assert "tensorflow_cpu==2.21.0" in (beside / "pip-freeze.txt").read_text(encoding="utf-8")
        assert (beside / "spec.json").exists()


def test_the_classic_builder_still_builds_and_tests_the_default_environment(
    containerd_engine: str, tmp_path: Path
) -> None:
    """The fallback: the Engine API's classic builder, cold, and it says what it cannot do.

    On the second engine (the containerd image store): a cold build of the whole ladder there
    leaves the main engine's images, and the results other tests stored for them, alone.
    """
    import docker

    state = tmp_path / "state"
    run = cli(state, "build", "--builder", "classic", "--json", docker_host=containerd_engine)
    assert run.code == 0, run.stderr[-5000:]
    result = run.json()
    builds = by_key(result["builds"])
    if any(builds[key]["state"] == "built" for key in LADDER[1:]):
        assert "build backend: classic" in run.stderr
        assert "deprecated" in run.stderr
    assert list(builds) == list(LADDER)
    assert [f"{t['spec']}:{t['variant']}" for t in result["tests"]] == list(LADDER)
    assert all(t["passed"] for t in result["tests"]), result["tests"]
    client = docker.DockerClient(base_url=containerd_engine, timeout=600)
    try:
        for parent, key in itertools.pairwise(LADDER):
            if builds[key]["state"] != "built":
                continue  # up to date there (built in an earlier run, by either backend)
            image = client.api.inspect_image(builds[key]["image_id"])
            assert image["Config"]["Labels"]["io.hepml.builder"] == "classic", key
            # its own steps: the history above its parent's (newest first), which may have
            # come from either backend
            history = client.api.history(builds[key]["image_id"])
            below = len(client.api.history(builds[parent]["image_id"]))
            own = history[: len(history) - below]
            assert own, key
            assert not any(h.get("Comment") == "buildkit.dockerfile.v0" for h in own), key
    finally:
        client.close()
