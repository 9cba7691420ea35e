"""A failing command anywhere in a step fails the build, in the definition file as in Docker.

POSIX ``sh`` ignores ``set -e`` for every command of an ``a && b && c`` list but the last, so
``set -e`` alone does not stop ``%post`` at a failing step; every step ends in ``|| exit $?``.
The rendered ``%post`` and ``%test`` text runs here under ``/bin/sh -e`` (as Apptainer runs
it) against a stand-in: a directory where a step after the failing one would leave a file. The
Dockerfile's ``RUN`` of the same step runs as Docker runs the shell form: ``/bin/sh -c``.
Real Apptainer and the Docker Engine prove the same in tests/integration/test_apptainer.py.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from hepml_images import ir
from hepml_images.pipeline import resolve_directory
from hepml_images.render.writers import render
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from pathlib import Path


def failing_plan(marker: Path, *, position: int) -> ir.ImagePlan:
    """debian-hdf5's plan with its steps replaced: one list fails at ``position``, then more."""
    variants = resolve_directory(shipped_dir()).variants
    plan = next(v for v in variants if v.spec == "debian-hdf5").plan
    commands = ["true", "true", "true"]
    commands[position] = "false"
    commands.append(f"touch {marker}.same-step")
    steps = (
        ir.Run(title="first", commands=(f"touch {marker}.before",)),
        ir.Run(title="fails", commands=tuple(commands)),
        ir.Run(title="after", commands=(f"touch {marker}.after",)),
    )
    return dataclasses.replace(plan, steps=steps, tests=())


def section(text: str, name: str) -> str:
    """The body of one section of a definition file."""
    match = re.search(rf"^{name}\n(.*?)(?=^%|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no {name} in\n{text}"
    return match.group(1)


def run_sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-e", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("position", [0, 1, 2])
def test_post_stops_at_a_failing_command_of_a_list(tmp_path: Path, position: int) -> None:
    marker = tmp_path / "m"
    post = section(render(failing_plan(marker, position=position)).singularity, "%post")
    done = run_sh(post, tmp_path)
    assert done.returncode == 1, done
    assert (tmp_path / "m.before").exists()
    assert not (tmp_path / "m.same-step").exists()
    assert not (tmp_path / "m.after").exists(), "the build went on after a failing step"


def test_without_the_exit_the_same_post_would_go_on(tmp_path: Path) -> None:
    """The stand-in tells the two apart: ``set -e`` alone runs the later steps."""
    marker = tmp_path / "m"
    post = section(render(failing_plan(marker, position=0)).singularity, "%post")
    done = run_sh(post.replace(" \\\n        || exit $?", ""), tmp_path)
    assert done.returncode == 0
    assert (tmp_path / "m.after").exists()


def test_the_failing_status_is_kept(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    plan = failing_plan(marker, position=0)
    steps = (ir.Run(title="fails", commands=("true", "exit 7", "true")),)
    post = section(render(dataclasses.replace(plan, steps=steps)).singularity, "%post")
    assert run_sh(post, tmp_path).returncode == 7


@pytest.mark.parametrize("position", [0, 1, 2])
def test_the_dockerfile_fails_the_same_run(tmp_path: Path, position: int) -> None:
    """Docker runs the shell form of ``RUN`` as ``/bin/sh -c``: the list fails the step."""
    marker = tmp_path / "m"
    dockerfile = render(failing_plan(marker, position=position)).dockerfile
    runs = re.findall(r"^RUN (.*?)(?=\n\n|\n#|\Z)", dockerfile, flags=re.MULTILINE | re.DOTALL)
    assert len(runs) == 3
    assert run_sh(runs[0], tmp_path).returncode == 0
    failed = subprocess.run(
        ["/bin/sh", "-c", runs[1]],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert failed.returncode == 1
    assert not (tmp_path / "m.same-step").exists()


def test_a_failing_smoke_command_fails_percent_test(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    plan = dataclasses.replace(
        failing_plan(marker, position=0),
        tests=(
            ir.Test(name="ok", run="true"),
            ir.Test(name="bad", run="true && false && true"),
            ir.Test(name="later", run=f"touch {marker}.after"),
        ),
    )
    test = section(render(plan).singularity, "%test")
    assert run_sh(test, tmp_path).returncode == 1
    assert not (tmp_path / "m.after").exists()
