"""The no-op path for real: a user's spec built, then built again with nothing to do.

The second run must take the no-op path (``HEPML_NOOP=explain`` says so on stderr's first line)
and print what the full path (``HEPML_NOOP=0``) prints for the same state, JSON included; an
edit of the spec must take the full path again.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import Run, cli_env

if TYPE_CHECKING:
    from pathlib import Path

    import docker

pytestmark = pytest.mark.integration

SPEC = """\
name: t-noop
extends: debian-base
description: a user's spec for the no-op path
version: "1.0.0"
env:
  NOOP_RUN: "{run}"
files:
  - src: hello.txt
    dest: /opt/hello.txt
smoke:
  - name: the file is there
    run: test -f /opt/hello.txt
"""
_STAMP = re.compile(r"^\d\d:\d\d:\d\d ", re.MULTILINE)


def _cli(state: Path, cwd: Path, noop: str, *args: str) -> Run:
    env = {**cli_env(state), "HEPML_NOOP": noop}
    env.pop("SOURCE_DATE_EPOCH", None)
    done = subprocess.run(
        [sys.executable, "-m", "hepml_images", "build", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def test_second_build_takes_the_noop_path(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.txt").write_text("hello\n")
    spec = work / "t-noop.yaml"
    spec.write_text(SPEC.format(run=uuid.uuid4().hex))
    state = tmp_path / "state"
    try:
        first = _cli(state, work, "explain", "t-noop.yaml", "--json")
        assert first.code == 0, first.stderr[-3000:]
        assert first.stderr.startswith("no-op path: not taken: no record"), first.stderr[:300]
        states = {b["spec"]: b["state"] for b in first.json()["builds"]}
        assert states == {"debian-base": "up to date", "t-noop": "built"}

        fast = _cli(state, work, "explain", "t-noop.yaml", "--json")
        full = _cli(state, work, "0", "t-noop.yaml", "--json")
        assert fast.code == full.code == 0, fast.stderr + full.stderr
        head, _, rest = fast.stderr.partition("\n")
        assert head == "no-op path: taken: 2 images up to date"
        assert fast.stdout == full.stdout
        assert all(b["state"] == "up to date" for b in fast.json()["builds"])
        assert _STAMP.sub("", rest) == _STAMP.sub("", full.stderr)
        assert "t-noop:default: up to date, passed its smoke tests" in rest

        (work / "hello.txt").write_text("changed\n")
        edited = _cli(state, work, "explain", "t-noop.yaml", "--json")
        assert edited.code == 0, edited.stderr[-3000:]
        assert edited.stderr.startswith("no-op path: not taken:")
        assert "hello.txt changed" in edited.stderr.splitlines()[0]
        built = {b["spec"]: b["state"] for b in edited.json()["builds"]}
        assert built["t-noop"] == "built"
    finally:
        for image in docker_client.images.list(name="hepml/t-noop"):
            for tag in image.tags:
                docker_client.images.remove(tag, force=True)
