"""Graph order, skipping, rebuilds, failures, interruption and broken images, for real.

Small specs on top of the shipped, bootstrapped ``debian-base``: their builds take seconds, so
each behaviour gets its own test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import by_key, cli, cli_env, leftovers

if TYPE_CHECKING:
    from pathlib import Path

    import docker

pytestmark = pytest.mark.integration

PARENT = """\
name: t-parent
extends: debian-base
description: test parent
version: "1.0.0"
env:
  GREETING: {greeting}
  TEST_RUN: "{run}"
smoke:
  - name: greeting set
    run: test "$GREETING" = {greeting}
"""
CHILD = """\
name: t-child
extends: t-parent
description: test child with two variants
version: "1.0.0"
matrix:
  flavor: [a, b]
env:
  FLAVOR: ${{ matrix.flavor }}
smoke:
  - name: flavor set
    run: test -n "$FLAVOR"
"""
OTHER = """\
name: t-other
extends: debian-base
description: independent of the others
version: "1.0.0"
env:
  OTHER: "{run}"
"""
BROKEN = """\
name: t-broken
extends: debian-base
description: asks for a package that does not exist
version: "1.0.0"
components:
  system-packages:
    packages: [hepml-no-such-package]
"""
BAD_SMOKE = """\
name: t-badsmoke
extends: debian-base
description: builds, but its smoke command fails
version: "1.0.0"
env:
  MARK: here
smoke:
  - name: a file that is not there
    run: test -f /no/such/file
"""
SLOW = """\
name: t-slow
extends: debian-base
description: a long download to interrupt
version: "1.0.0"
components:
  system-packages:
    packages: [openjdk-17-jdk-headless]
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


#: Makes this session's test images new, whatever earlier sessions left in the engine.
RUN = uuid.uuid4().hex


def write_specs(directory: Path, **texts: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = directory / f"{name.replace('_', '-')}.yaml"
        path.write_text(text.replace("{run}", RUN), encoding="utf-8")
    return directory


def build(state: Path, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
    run = cli(state, "build", "--json", *args)
    data = run.json()
    return run.code, by_key(data["builds"]), run.stderr


def test_parallel_build_respects_the_graph_and_second_build_skips(
    tmp_path: Path, state: Path, docker_client: docker.DockerClient
) -> None:
    specs = write_specs(tmp_path, t_parent=PARENT.replace("{greeting}", "hello"), t_child=CHILD)
    code, builds, stderr = build(state, str(specs / "t-child.yaml"), "-j", "3", "--no-test")
    assert code == 0, stderr[-3000:]
    assert list(builds) == ["debian-base:default", "t-parent:default", "t-child:a", "t-child:b"]
    parent = builds["t-parent:default"]
    assert parent["state"] == "built"
    for key in ("t-child:a", "t-child:b"):
        child = builds[key]
        assert child["state"] == "built"
        assert isinstance(child["started"], float)
        assert isinstance(parent["finished"], float)
        assert child["started"] >= parent["finished"]
        labels = docker_client.images.get(str(child["image_id"])).labels
        assert labels["io.hepml.digest"] == child["digest"]
    before = leftovers(docker_client)
    code, again, stderr = build(state, str(specs / "t-child.yaml"), "--no-test")
    assert code == 0, stderr[-3000:]
    assert {b["state"] for b in again.values()} == {"up to date"}
    assert {k: b["image_id"] for k, b in again.items()} == {
        k: b["image_id"] for k, b in builds.items()
    }
    assert leftovers(docker_client) == before


def test_parent_change_rebuilds_parent_and_children_only(
    tmp_path: Path, state: Path, docker_client: docker.DockerClient
) -> None:
    specs = write_specs(tmp_path, t_parent=PARENT.replace("{greeting}", "hello"), t_child=CHILD)
    code, first, stderr = build(state, str(specs / "t-child.yaml"))
    assert code == 0, stderr[-3000:]
    write_specs(tmp_path, t_parent=PARENT.replace("{greeting}", "changed"))
    code, second, stderr = build(state, str(specs / "t-child.yaml"))
    assert code == 0, stderr[-3000:]
    assert second["debian-base:default"]["state"] == "up to date"
    for key in ("t-parent:default", "t-child:a", "t-child:b"):
        assert second[key]["state"] == "built"
        assert second[key]["image_id"] != first[key]["image_id"]
    image = docker_client.images.get(str(second["t-child:a"]["image_id"]))
    assert "GREETING=changed" in image.attrs["Config"]["Env"]


def test_failed_build_leaves_nothing_and_independent_images_finish(
    tmp_path: Path, state: Path, docker_client: docker.DockerClient
) -> None:
    specs = write_specs(tmp_path, t_broken=BROKEN, t_other=OTHER)
    # the base first, so that the snapshot below sees it
    assert cli(state, "build", "debian-base", "--no-test").code == 0
    before = leftovers(docker_client)
    code, builds, stderr = build(
        state, str(specs / "t-broken.yaml"), str(specs / "t-other.yaml"), "-j", "2", "--no-test"
    )
    assert code == 1
    assert builds["t-broken:default"]["state"] == "failed"
    reason = str(builds["t-broken:default"]["reason"])
    # the classic builder's words, or BuildKit's (which names the step without boilerplate)
    assert "returned a non-zero code" in reason or (
        "failed: exit code: 100" in reason and "RUN apt-get update" in reason
    ), reason
    assert builds["t-other:default"]["state"] == "built"
    assert "t-broken:default failed" in stderr
    assert "hepml-no-such-package" in stderr  # the log tail says what went wrong
    containers, dangling = leftovers(docker_client)
    assert containers == before[0]
    assert dangling == before[1]


def test_smoke_tests_catch_a_broken_image(tmp_path: Path, state: Path) -> None:
    specs = write_specs(tmp_path, t_badsmoke=BAD_SMOKE)
    run = cli(state, "build", str(specs / "t-badsmoke.yaml"), "--json")
    assert run.code == 1
    data = run.json()
    (report,) = data["tests"]
    assert report["passed"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["a file that is not there"]["status"] == "failed"
    assert checks["debian 12"]["status"] == "passed"
    assert "smoke tests failed" in run.stderr
    # `test` on the same image agrees, and says so with its exit code
    again = cli(state, "test", str(specs / "t-badsmoke.yaml"), "--json")
    assert again.code == 1
    assert again.json()["tests"][0]["image_id"] == report["image_id"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_build_leaves_nothing(
    tmp_path: Path, state: Path, docker_client: docker.DockerClient, signum: int
) -> None:
    specs = write_specs(tmp_path / "specs", t_slow=SLOW)
    assert cli(state, "build", "debian-base", "--no-test").code == 0
    for stale in docker_client.images.list(name="hepml/t-slow"):  # from an earlier run
        docker_client.images.remove(str(stale.id), force=True)
    before = leftovers(docker_client)
    logs = tmp_path / "logs"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hepml_images",
            "build",
            str(specs / "t-slow.yaml"),
            "--no-test",
            # BuildKit's cache may hold the long step from an earlier run that finished it
            "--no-cache",
            "--log-dir",
            str(logs),
        ],
        env=cli_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = logs / "t-slow-default.log"
    deadline = time.monotonic() + 400  # the base is bootstrapped again first (--no-cache)
    while time.monotonic() < deadline:
        # the long step has started: the classic builder's container, or BuildKit's step line
        text = log.read_text(encoding="utf-8") if log.exists() else ""
        if "Running in" in text or re.search(r"^#2/\d+ RUN ", text, re.MULTILINE):
            break
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the build never started its long step")
    time.sleep(1.0)
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    containers, dangling = leftovers(docker_client)
    assert containers == before[0]
    assert dangling == before[1]
    image = docker_client.api.images(name="hepml/t-slow")
    assert image == []
