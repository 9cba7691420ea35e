"""`hepml-images lock` for real: a user's spec on debian-python locked against the live PyPI,
built from its lock, and refused once its requirement changes without a new lock.

Builds the Debian ladder up to debian-python where it is not there yet (slow the first time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from hepml_images import lockfile
from tests.integration.helpers import by_key, cli

if TYPE_CHECKING:
    from pathlib import Path

    import docker

pytestmark = pytest.mark.integration

SPEC = """name: lock-six
extends: debian-python
description: six from a lock
components:
  pip:
    requirements: [REQ]
"""

#: what the venv has that no lock names: the venv's own pip and setuptools (python3-venv's wheels)
VENV_OWN = {"pip", "setuptools"}


def _freeze(text: str) -> dict[str, str]:
    rows = (line.split("==", 1) for line in text.splitlines() if "==" in line)
    return {lockfile.normalize(name): version.strip() for name, version in rows}


def test_lock_build_and_stale(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = tmp_path / "lock-six.yaml"
    spec.write_text(SPEC.replace("REQ", "six==1.17.0"))

    locked = cli(state, "lock", str(spec))
    assert locked.code == 0, locked.stderr[-3000:]
    lock_path = tmp_path / "lock-six.locks" / "pylock.default.toml"
    lock = lockfile.parse(lock_path.read_bytes())
    assert lock.pins()["six"] == "1.17.0"
    assert lock.os.resolved

    check = cli(state, "lock", "--check", str(spec))
    assert check.code == 0, check.stdout + check.stderr[-3000:]
    assert "lock-six:default: current" in check.stdout
    assert lock_path.read_bytes() == lock.raw  # --check writes nothing

    built = cli(state, "build", "--json", str(spec))
    assert built.code == 0, built.stderr[-5000:]
    image = by_key(built.json()["builds"])["lock-six:default"]["image_id"]
    freeze = _freeze(
        docker_client.containers.run(
            image, ["cat", "/.hepml/pip-freeze.txt"], remove=True, network_disabled=True
        ).decode()
    )
    assert {n: v for n, v in freeze.items() if n not in VENV_OWN} == lock.pins()

    spec.write_text(SPEC.replace("REQ", "six==1.16.0"))
    refused = cli(state, "build", str(spec))
    assert refused.code == 2, refused.stdout + refused.stderr
    assert "lock of variant default (lock-six.locks/pylock.default.toml) is stale" in (
        refused.stderr
    )
    assert "requirement six==1.16.0 added" in refused.stderr
    assert "hepml-images lock lock-six" in refused.stderr
