"""Publishing to a real registry on loopback: the gate, tags, faults and credentials."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import Run, cli, cli_env

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

SPEC = """\
name: t-pub
extends: debian-base
description: a small image to publish
version: "{version}"
env:
  TEST_RUN: "{run}"
  CONTENT: "{content}"
smoke:
  - name: content set
    run: test -n "$CONTENT"
tags:
  - "${{ spec.version }}"
publish:
  tags: ["${{ spec.version }}", latest]
  immutable: ["${{ spec.version }}"]
"""
BAD = """\
name: t-pubbad
extends: debian-base
description: its smoke test fails
version: "1.0.0"
env:
  TEST_RUN: "{run}"
smoke:
  - name: always fails
    run: "false"
"""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def spec(tmp_path: Path, *, version: str = "1.0.0", content: str = "a", text: str = SPEC) -> Path:
    """Write a spec with a fresh TEST_RUN value: a new image, whatever the engine holds."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / ("t-pub.yaml" if text is SPEC else "t-pubbad.yaml")
    filled = (
        text.replace("{version}", version)
        .replace("{run}", uuid.uuid4().hex)
        .replace("{content}", content)
    )
    path.write_text(filled, encoding="utf-8")
    return path


def hepml(state: Path, registry: Registry, *args: str, password: str | None = None) -> Run:
    """Our CLI with the registry's credentials in the environment."""
    env = cli_env(state)
    env["HEPML_REGISTRY_USER"] = registry.username
    env["HEPML_REGISTRY_PASSWORD"] = registry.password if password is None else password
    done = subprocess.run(
        [sys.executable, "-m", "hepml_images", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def publish(state: Path, registry: Registry, *args: str, password: str | None = None) -> Run:
    target = f"{registry.host}/hepml-test"
    return hepml(state, registry, "publish", "--registry", target, *args, password=password)


def inspect(state: Path, registry: Registry, *args: str) -> Run:
    return hepml(state, registry, "inspect", *args)


def test_untested_and_failed_images_are_refused(
    tmp_path: Path, state: Path, registry: Registry
) -> None:
    untested = spec(tmp_path)
    assert cli(state, "build", str(untested), "--no-test").code == 0
    run = publish(state, registry, str(untested), "--json")
    assert run.code == 1
    (row,) = run.json()["publish"]
    assert "no smoke-test result" in row["error"]
    assert row["error"].startswith("refused hepml/t-pub:")
    assert row["tags"] == []
    bad = spec(tmp_path, text=BAD)
    assert cli(state, "build", str(bad)).code == 1
    run = publish(state, registry, str(bad), "--json")
    assert run.code == 1
    assert "smoke tests failed: always fails" in run.json()["publish"][0]["error"]
    assert registry.tags("hepml-test/t-pub") == []
    assert registry.tags("hepml-test/t-pubbad") == []


def test_publish_pushes_every_tag_and_pulls_back_identical(
    tmp_path: Path, state: Path, registry: Registry, docker_client: docker.DockerClient
) -> None:
    path = spec(tmp_path)
    built = cli(state, "build", str(path), "--json")
    assert built.code == 0, built.stderr[-3000:]
    image_id = built.json()["builds"][-1]["image_id"]
    digest_tag = built.json()["builds"][-1]["image"].rsplit(":", 1)[1]
    run = publish(state, registry, str(path), "--json")
    assert run.code == 0, run.stderr[-3000:]
    (row,) = run.json()["publish"]
    assert {t["tag"]: t["action"] for t in row["tags"]} == {
        digest_tag: "pushed",
        "1.0.0": "pushed",
        "latest": "pushed",
    }
    repo = "hepml-test/t-pub"
    assert sorted(registry.tags(repo)) == sorted([digest_tag, "1.0.0", "latest"])
    published_id = row["published_id"]
    for tag in (digest_tag, "1.0.0", "latest"):
        digest, manifest = registry.manifest(repo, tag)
        assert digest == row["manifest"]
        assert manifest["config"]["digest"] == published_id
    # the published image is the tested one plus its smoke-test labels: the same layers
    tested = docker_client.images.get(image_id)
    published = docker_client.images.get(published_id)
    assert published.attrs["RootFS"]["Layers"] == tested.attrs["RootFS"]["Layers"]
    # pull back by digest into a clean name: the same image
    pulled = docker_client.images.pull(
        f"{registry.host}/{repo}@{row['manifest']}", auth_config=registry.auth_config()
    )
    assert pulled.id == published_id
    # provenance, read back from the registry without pulling
    env_run = inspect(state, registry, f"{registry.host}/{repo}:1.0.0", "--remote", "--json")
    assert env_run.code == 0, env_run.stderr[-3000:]
    remote = env_run.json()
    assert remote["where"] == f"registry {registry.host}"
    assert remote["image_id"] == published_id
    assert remote["digest"] == row["manifest"]
    labels = remote["labels"]
    assert labels["io.hepml.smoke.result"] == "passed"
    assert labels["io.hepml.smoke.image"] == image_id
    assert labels["io.hepml.smoke.checks"].startswith("2 passed")
    assert labels["io.hepml.digest"] == built.json()["builds"][-1]["digest"]
    assert labels["org.opencontainers.image.title"] == "t-pub"
    assert labels["org.opencontainers.image.version"] == "1.0.0"
    assert labels["org.opencontainers.image.base.name"].startswith("hepml/debian-base:")
    assert labels["org.opencontainers.image.base.digest"] == built.json()["builds"][0]["image_id"]
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["io.hepml.tool.version"]
    git_head = subprocess.run(
        ["git", "-C", str(path.parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if git_head.returncode == 0:  # the spec lives in a git checkout
        assert labels["org.opencontainers.image.revision"].startswith(git_head.stdout.strip())
    local = inspect(state, registry, f"hepml/t-pub:{digest_tag}", "--json").json()
    smoke = {k: v for k, v in labels.items() if k.startswith("io.hepml.smoke.")}
    assert local["labels"] == {k: v for k, v in labels.items() if k not in smoke}
    assert local["smoke_test"]["passed"] is True
    # a second publish finds everything there and pushes nothing new
    again = publish(state, registry, str(path), "--json")
    assert again.code == 0, again.stderr[-3000:]
    assert {t["action"] for t in again.json()["publish"][0]["tags"]} == {"already there"}
    # the password is nowhere in what we printed, nor in the image
    for text in (run.stdout, run.stderr, again.stdout, again.stderr):
        assert registry.password not in text
    for image in (image_id, published_id):
        assert registry.password not in repr(docker_client.api.history(image))
        assert registry.password not in repr(docker_client.api.inspect_image(image))
    # no file of the published image holds it (the needle is built inside the container from
    # two halves, so that the command line that searches does not contain it either)
    half = len(registry.password) // 2
    found = docker_client.containers.run(
        published_id,
        [
            "sh",
            "-c",
            'grep -rlF -e "$A$B" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; true',
        ],
        environment={"A": registry.password[:half], "B": registry.password[half:]},
        remove=True,
        network_disabled=True,
    )
    assert found.decode().strip() == ""


def test_immutable_version_tag_is_protected(
    tmp_path: Path, state: Path, registry: Registry
) -> None:
    version = f"9.{uuid.uuid4().int % 1000}.0"
    first = spec(tmp_path / "one", version=version, content="one")
    assert cli(state, "build", str(first)).code == 0
    assert publish(state, registry, str(first)).code == 0
    old_digest, _ = registry.manifest("hepml-test/t-pub", version)
    second = spec(tmp_path / "two", version=version, content="two")
    assert cli(state, "build", str(second)).code == 0
    run = publish(state, registry, str(second), "--json")
    assert run.code == 1
    actions = {t["tag"]: t["action"] for t in run.json()["publish"][0]["tags"]}
    assert actions[version] == "refused"
    assert actions["latest"] == "moved"
    assert registry.manifest("hepml-test/t-pub", version)[0] == old_digest
    forced = publish(state, registry, str(second), "--force", "--json")
    assert forced.code == 0, forced.stderr[-3000:]
    assert registry.manifest("hepml-test/t-pub", version)[0] != old_digest


def test_wrong_password_is_reported_with_the_registry_name(
    tmp_path: Path, state: Path, registry: Registry
) -> None:
    path = spec(tmp_path, version=f"6.{uuid.uuid4().int % 1000}.0")
    assert cli(state, "build", str(path)).code == 0
    run = publish(state, registry, str(path), "--json", password="wrong-" + uuid.uuid4().hex)
    assert run.code == 1
    assert f"{registry.host} refused the credentials" in run.json()["publish"][0]["error"]
    assert "HEPML_REGISTRY_PASSWORD" in run.stderr  # the hint says how to fix it
    assert "retrying" not in run.stderr  # an auth failure is not retried


def test_registry_down_then_up_is_retried(tmp_path: Path, state: Path, registry: Registry) -> None:
    """The registry comes back only once publish has said it is retrying.

    Started on a timer instead, the registry could be back before publish first reached it
    (a slow machine spends longer before its first request), and nothing was retried.
    """
    path = spec(tmp_path, version=f"8.{uuid.uuid4().int % 1000}.0")
    assert cli(state, "build", str(path)).code == 0
    registry.stop()
    env = cli_env(state)
    env["HEPML_REGISTRY_USER"] = registry.username
    env["HEPML_REGISTRY_PASSWORD"] = registry.password
    command = [sys.executable, "-m", "hepml_images", "publish", "--registry"]
    command += [f"{registry.host}/hepml-test", str(path), "--json"]
    stderr: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        out = process.stdout
        collected: list[str] = []
        reader = threading.Thread(target=lambda: collected.append(out.read()), daemon=True)
        reader.start()
        try:
            for line in process.stderr:
                stderr.append(line)
                if "retrying" in line and not registry.running():
                    registry.start()
            process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
            if not registry.running():
                registry.start()
        reader.join(timeout=60)
    run = Run(process.returncode, "".join(collected), "".join(stderr))
    assert "retrying" in run.stderr, run.stderr[-3000:]
    assert "connection refused" in run.stderr.lower()
    assert run.code == 0, run.stderr[-3000:]
    assert {t["action"] for t in run.json()["publish"][0]["tags"]} <= {
        "pushed",
        "moved",
        "already there",
    }


def test_dry_run_pushes_nothing(tmp_path: Path, state: Path, registry: Registry) -> None:
    path = spec(tmp_path, version=f"7.{uuid.uuid4().int % 1000}.0")
    assert cli(state, "build", str(path)).code == 0
    before = registry.tags("hepml-test/t-pub")
    run = publish(state, registry, str(path), "--dry-run", "--json")
    assert run.code == 0, run.stderr[-3000:]
    assert {t["action"] for t in run.json()["publish"][0]["tags"]} <= {"would push", "would update"}
    assert registry.tags("hepml-test/t-pub") == before
