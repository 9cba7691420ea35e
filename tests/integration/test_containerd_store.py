"""The first two images of the default ladder on the containerd image store, end to end.

Against the second engine of ``containerd_engine`` (image ID = manifest digest, OCI archives
with compressed blobs): a bootstrapped base and the HDF5 image on it are built (then found up to
date), smoke-tested, inspected, made into a SIF tested on that engine and with real Apptainer,
and a sandbox Apptainer runs; then published to the loopback registry. The specs are the shipped
``debian-base`` and ``debian-hdf5`` under names of their own (``t-ctd-*``), so the first build
really bootstraps and loads (the bug this covers was there), and so that the images this module
removes, before and after, can only be its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker
import pytest

from hepml_images.devtools import apptainer as dev
from hepml_images.engine import connect
from hepml_images.spec.load import shipped_dir
from tests.conftest import require_tool
from tests.integration.helpers import Run, by_key, cli_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

BASE, HDF5 = "t-ctd-base", "t-ctd-hdf5"


@dataclass(frozen=True)
class Ladder:
    """The two specs, the state directory and the engine they are built in."""

    specs: Path
    state: Path
    host: str
    client: docker.DockerClient

    @property
    def hdf5(self) -> str:
        return str(self.specs / f"{HDF5}.yaml")

    def run(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """The CLI against the containerd-store engine."""
        full = {**cli_env(self.state), "DOCKER_HOST": self.host, **(env or {})}
        full.pop("SOURCE_DATE_EPOCH", None)
        done = subprocess.run(
            [sys.executable, "-m", "hepml_images", *args],
            capture_output=True,
            text=True,
            env=full,
            timeout=1800,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)


def _remove_ours(client: docker.DockerClient) -> None:
    """Remove the images of this module's specs (by their spec label), children first."""
    for spec in (HDF5, BASE):
        for image in client.images.list(filters={"label": f"io.hepml.spec={spec}"}):
            client.images.remove(str(image.id), force=True)


@pytest.fixture(scope="module")
def ladder(containerd_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ladder]:
    shipped = shipped_dir()
    specs = tmp_path_factory.mktemp("ctd-specs")
    base = (shipped / "debian-base.yaml").read_text(encoding="utf-8")
    (specs / f"{BASE}.yaml").write_text(base.replace("name: debian-base", f"name: {BASE}"))
    hdf5 = (shipped / "debian-hdf5.yaml").read_text(encoding="utf-8")
    hdf5 = hdf5.replace("name: debian-hdf5", f"name: {HDF5}")
    (specs / f"{HDF5}.yaml").write_text(hdf5.replace("extends: debian-base", f"extends: {BASE}"))
    client = docker.DockerClient(base_url=containerd_engine, timeout=300)
    _remove_ours(client)  # left by an interrupted session: the first build must really build
    try:
        yield Ladder(
            specs=specs,
            state=tmp_path_factory.mktemp("ctd-state"),
            host=containerd_engine,
            client=client,
        )
    finally:
        _remove_ours(client)
        client.close()


@pytest.fixture(scope="module")
def built(ladder: Ladder) -> dict[str, dict[str, Any]]:
    """``build`` of the HDF5 image and its base, smoke tests included: the builds by key."""
    require_tool("mmdebstrap")
    first = ladder.run("build", ladder.hdf5, "--json")
    assert first.code == 0, first.stderr[-4000:]
    return by_key(first.json()["builds"])


def test_a_bootstrapped_base_and_its_child_build_test_and_are_then_up_to_date(
    ladder: Ladder, built: dict[str, dict[str, Any]]
) -> None:
    assert {b["state"] for b in built.values()} == {"built"}
    base = built[f"{BASE}:default"]
    attrs = ladder.client.api.inspect_image(base["image"])
    assert base["image_id"] == attrs["Id"]  # the engine's own ID …
    assert attrs["Descriptor"]["digest"] == attrs["Id"]  # … which is the manifest's digest here
    hdf5 = ladder.client.api.inspect_image(built[f"{HDF5}:default"]["image"])
    assert hdf5["Config"]["Labels"]["org.opencontainers.image.base.digest"] == attrs["Id"]

    again = ladder.run("build", ladder.hdf5, "--json")
    assert again.code == 0, again.stderr[-3000:]
    report = again.json()
    assert {b["state"] for b in report["builds"]} == {"up to date"}
    assert {b["image_id"] for b in report["builds"]} == {b["image_id"] for b in built.values()}
    assert "up to date, passed its smoke tests" in again.stderr
    assert report["tests"] == []


def test_inspect_shows_the_engine_id_and_the_smoke_test_result(
    ladder: Ladder, built: dict[str, dict[str, Any]]
) -> None:
    done = ladder.run("inspect", f"hepml/{HDF5}:default", "--json")
    assert done.code == 0, done.stderr[-2000:]
    info = done.json()
    assert info["image_id"] == built[f"{HDF5}:default"]["image_id"]
    assert info["labels"]["io.hepml.spec"] == HDF5
    assert info["smoke_test"]["passed"] is True


@pytest.fixture(scope="module")
def apptainer_on_main(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``apptainer``: real Apptainer in its helper image on the MAIN engine.

    The helper image and its wrappers talk to the engine of ``DOCKER_HOST``; the CLI under test
    has it pointing at the containerd engine, so the ``apptainer`` put first on PATH unsets it.
    Only ``exec``/``inspect`` of files are used, which need no engine image of ours.
    """
    require_tool("docker")
    require_tool("mmdebstrap")
    saved = os.environ.pop("DOCKER_HOST", None)
    engine = connect()
    try:
        user, _root = dev.install(engine, tmp_path_factory.mktemp("ctd-apptainer-wrappers"))
    finally:
        engine.close()
        if saved is not None:
            os.environ["DOCKER_HOST"] = saved
    shim = tmp_path_factory.mktemp("ctd-apptainer-bin")
    (shim / "apptainer").write_text(f'#!/bin/sh\nunset DOCKER_HOST\nexec {user} "$@"\n')
    (shim / "apptainer").chmod(0o755)
    return shim


def _shared(path: Path) -> Path:
    """A directory Apptainer's unprivileged user may read and write (pytest's are 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def test_sif_and_sandbox_from_the_containerd_store_pass_their_smoke_tests(
    ladder: Ladder,
    built: dict[str, dict[str, Any]],
    apptainer_on_main: Path,
    tmp_path: Path,
) -> None:
    require_tool("mksquashfs")
    require_tool("sqfs2tar")
    assert built
    out = _shared(tmp_path / "out")
    sif = out / "hdf5.sif"
    # natively from the engine's OCI archive (compressed blobs), tested on the same engine
    made = ladder.run("sif", ladder.hdf5, "--builder", "native", "-o", str(sif), "--json")
    assert made.code == 0, made.stderr[-4000:]
    report = made.json()
    [tested] = report["tests"]
    assert tested["passed"], tested
    assert tested["runner"].startswith("the engine"), tested
    names = {c["name"]: c["status"] for c in tested["checks"]}
    assert names["h5dump runs"] == "passed"
    assert set(names.values()) == {"passed"}, names
    leftover = ladder.client.images.list(name="hepml-sif-check")
    assert leftover == []  # the SIF's rootfs image, loaded under the engine's own ID, removed

    # the same SIF with real Apptainer, as a grid job runs it
    path = f"{apptainer_on_main}{os.pathsep}{os.environ.get('PATH', '')}"
    again = ladder.run("test", str(sif), "--specs", str(ladder.specs), "--json", env={"PATH": path})
    assert again.code == 0, again.stderr[-3000:]
    [with_apptainer] = again.json()["tests"]
    assert with_apptainer["passed"], with_apptainer
    assert with_apptainer["runner"].startswith("apptainer exec --cleanenv"), with_apptainer

    sandbox = out / "sandbox"
    unpacked = ladder.run("sandbox", ladder.hdf5, "-o", str(sandbox))
    assert unpacked.code == 0, unpacked.stderr[-3000:]
    labels = json.loads((sandbox / ".singularity.d" / "labels.json").read_text())
    assert labels["io.hepml.spec"] == HDF5
    assert labels["io.hepml.smoke.result"] == "passed"
    ran = subprocess.run(
        [str(apptainer_on_main / "apptainer"), "exec", "--cleanenv", str(sandbox), "h5dump", "-V"],
        capture_output=True,
        text=True,
        env={**os.environ, "HEPML_APPTAINER_BIND": str(sandbox)},
        timeout=600,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "1.10" in ran.stdout


def test_publish_from_the_containerd_store(
    ladder: Ladder, built: dict[str, dict[str, Any]], registry: Registry
) -> None:
    target = f"{registry.host}/hepml-ctd"
    env = {"HEPML_REGISTRY_USER": registry.username, "HEPML_REGISTRY_PASSWORD": registry.password}
    published = ladder.run("publish", ladder.hdf5, "--registry", target, "--json", env=env)
    assert published.code == 0, published.stderr[-3000:]
    rows = {r["repository"]: r for r in published.json()["publish"]}
    row = rows[f"{target}/{HDF5}"]
    content_tag = built[f"{HDF5}:default"]["image"].rsplit(":", 1)[1]
    actions = {t["tag"]: t["action"] for t in row["tags"]}
    assert actions[content_tag] == "pushed", row
    assert set(actions.values()) == {"pushed"}, row
    repo = f"hepml-ctd/{HDF5}"
    digest, manifest = registry.manifest(repo, content_tag)
    assert digest == row["manifest"]
    # the published image is the tested one plus labels, tagged <content ref>-tested
    tested = ladder.client.api.inspect_image(f"hepml/{HDF5}:{content_tag}-tested")
    assert row["published_id"] == tested["Id"]
    _, config = registry._get(f"/v2/{repo}/blobs/{manifest['config']['digest']}")
    labels = json.loads(config)["config"]["Labels"]
    assert labels["io.hepml.smoke.result"] == "passed"
    assert labels["io.hepml.smoke.image"] == built[f"{HDF5}:default"]["image_id"]
    assert json.loads(config)["rootfs"]["diff_ids"] == tested["RootFS"]["Layers"]

    again = ladder.run("publish", ladder.hdf5, "--registry", target, "--json", env=env)
    assert again.code == 0, again.stderr[-3000:]
    [row] = [r for r in again.json()["publish"] if r["repository"] == f"{target}/{HDF5}"]
    assert {t["action"] for t in row["tags"]} == {"already there"}, row
