"""The issue's acceptance path: the default environment, built, tested and pushed to the loopback
registry, with its provenance read back from the registry; an interrupted publish is resumed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import Run, cli, cli_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration


def env_for(state: Path, registry: Registry) -> dict[str, str]:
    env = cli_env(state)
    env["HEPML_REGISTRY_USER"] = registry.username
    env["HEPML_REGISTRY_PASSWORD"] = registry.password
    env["HEPML_REGISTRY"] = f"{registry.host}/hepml"
    return env


def run(state: Path, registry: Registry, *args: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "hepml_images", *args],
        capture_output=True,
        text=True,
        env=env_for(state, registry),
        timeout=1800,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def test_build_push_publishes_the_default_environment_with_provenance(
    tmp_path: Path, registry: Registry
) -> None:
    state = tmp_path / "state"
    built = cli(state, "build", "--json")
    assert built.code == 0, built.stderr[-3000:]
    tf = built.json()["builds"][-1]
    assert tf["spec"] == "debian-tensorflow"

    # an interrupted publish: Ctrl-C while the big layer is being pushed
    process = subprocess.Popen(
        [sys.executable, "-m", "hepml_images", "publish"],
        env=env_for(state, registry),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)
    interrupted = process.poll() is None
    if interrupted:
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    if interrupted:
        assert process.returncode == 130, stderr[-3000:]
        assert "run the same command again" in stderr

    # build --push: nothing to build, the stored results stand, the push is finished
    pushed = run(state, registry, "build", "--push", "--json")
    assert pushed.code == 0, pushed.stderr[-3000:]
    report = pushed.json()
    assert {b["state"] for b in report["builds"]} == {"up to date"}
    assert report["tests"] == []
    (row,) = report["publish"]
    assert row["repository"] == f"{registry.host}/hepml/debian-tensorflow"
    tags = {t["tag"]: t["action"] for t in row["tags"]}
    assert set(tags) == {tf["image"].rsplit(":", 1)[1], "1.0.0-tf2.21.0-py3.11-cpu", "cpu"}
    assert set(tags.values()) <= {"pushed", "already there", "moved"}

    # provenance from the registry, without pulling
    seen = run(
        state,
        registry,
        "inspect",
        "--remote",
        "--json",
        f"{registry.host}/hepml/debian-tensorflow:1.0.0-tf2.21.0-py3.11-cpu",
    )
    assert seen.code == 0, seen.stderr[-3000:]
    info = seen.json()
    assert info["digest"] == row["manifest"]
    labels = info["labels"]
    expected = {
        "io.hepml.spec": "debian-tensorflow",
        "io.hepml.variant": "cpu",
        "io.hepml.digest": tf["digest"],
        "io.hepml.version.python": "3.11",
        "io.hepml.version.hdf5": "1.10",
        "io.hepml.version.tensorflow": "2.21.0",
        "io.hepml.version.accelerator": "cpu",
        "io.hepml.version.family": "debian",
        "io.hepml.version.release": "bookworm",
        "io.hepml.smoke.result": "passed",
        "io.hepml.smoke.image": tf["image_id"],
        "org.opencontainers.image.title": "debian-tensorflow",
        "org.opencontainers.image.version": "1.0.0",
    }
    assert {k: labels.get(k) for k in expected} == expected
    for key in ("created", "revision", "base.name", "base.digest"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert registry.password not in seen.stdout + seen.stderr + pushed.stdout + pushed.stderr
