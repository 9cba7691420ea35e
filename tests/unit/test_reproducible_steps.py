"""Every rendered step leaves only what depends on its inputs (docs/reproducibility.md).

Checked on every shipped spec and variant, on the plan and on both rendered files: each Run
step sets ``SOURCE_DATE_EPOCH`` before anything else (hash-checked bytecode), and each step that
runs a package manager removes its logs, caches and backups after its last package-manager
command. The checks themselves are tested on steps that break them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from typing import TYPE_CHECKING

import pytest

from hepml_images import components, ir
from hepml_images.components import packages
from hepml_images.pipeline import render_variants, resolve_directory
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from hepml_images.spec.model import Family

FAMILIES: tuple[Family, ...] = ("debian", "ubuntu", "el9", "el7")

RESOLUTION = resolve_directory(shipped_dir())
VARIANTS = {f"{v.spec}/{v.slug}": v for v in RESOLUTION.variants}
RENDERED = {f"{v.spec}/{v.slug}": r for v, r in render_variants(RESOLUTION.variants)}

#: A command that runs the package manager (install, remove, or a key's dpkg -i).
_MANAGER = re.compile(
    r"\b(apt-get (install|purge)|dpkg -i|dnf (install|remove)|yum (install|remove))\b"
)

#: What the same apt step built twice differed in (BuildKit, SOURCE_DATE_EPOCH and
#: rewrite-timestamp=true), and the backups dpkg and debconf rewrite in such a step.
MEASURED_APT = (
    "/var/cache/ldconfig/aux-cache",
    "/var/log/alternatives.log",
    "/var/log/apt/history.log",
    "/var/log/apt/term.log",
    "/var/log/apt/eipp.log.xz",
    "/var/log/dpkg.log",
    "/var/lib/dpkg/status-old",
    "/var/cache/debconf/config.dat-old",
    "/var/cache/debconf/templates.dat-old",
)


def step_problems(step: ir.Run, family: Family) -> list[str]:
    """What in one Run step breaks the rule (empty: nothing)."""
    problems = []
    if step.commands[:1] != (components.STEP_ENV,):
        problems.append(f"{step.title}: does not start with {components.STEP_ENV!r}")
    managed = [i for i, c in enumerate(step.commands) if _MANAGER.search(c)]
    if managed:
        cleanup = packages.leftovers(family)
        after = step.commands[managed[-1] + 1 :]
        if not all(c in after for c in cleanup):
            problems.append(f"{step.title}: no {cleanup} after its last package-manager command")
    return problems


def _runs(key: str) -> list[ir.Run]:
    return [s for s in VARIANTS[key].plan.steps if isinstance(s, ir.Run)]


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_every_run_step_is_reproducible(key: str) -> None:
    family = VARIANTS[key].plan.family
    problems = [p for step in _runs(key) for p in step_problems(step, family)]
    assert problems == []


def test_the_shipped_specs_have_package_manager_steps() -> None:
    managed = [
        step.title
        for key in VARIANTS
        for step in _runs(key)
        if any(_MANAGER.search(c) for c in step.commands)
    ]
    assert len(managed) >= 5


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_both_files_carry_every_step_command(key: str) -> None:
    """The Dockerfile and the definition file run the same commands in each step."""
    rendered = RENDERED[key]
    for step in _runs(key):
        if step.wrapper:
            # behind a wrapper: one `bash -c` string, JSON in the RUN, shell-quoted in %post
            inner = " && ".join(step.commands)
            assert json.dumps(inner) in rendered.dockerfile, (key, step.title)
            assert shlex.quote(inner) in rendered.singularity, (key, step.title)
        else:
            joined = " \\\n    && ".join(step.commands)
            assert f"RUN {joined}\n" in rendered.dockerfile, (key, step.title)
            indented = joined.replace("\n", "\n    ")
            assert f"    {indented} \\\n        || exit $?\n" in rendered.singularity, (
                key,
                step.title,
            )


def test_a_step_without_the_epoch_is_found() -> None:
    step = ir.Run(title="t", commands=("apt-get install -y x", *packages.leftovers("debian")))
    assert step_problems(step, "debian") == [f"t: does not start with {components.STEP_ENV!r}"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_step_without_the_cleanup_is_found(family: Family) -> None:
    install = packages.install(family, ["x"])
    cut = tuple(c for c in install if c not in packages.leftovers(family))
    step = ir.Run(title="t", commands=components.step_commands(cut))
    assert len(step_problems(step, family)) == 1
    good = ir.Run(title="t", commands=components.step_commands(install))
    assert step_problems(good, family) == []


def test_a_cleanup_before_the_last_install_is_found() -> None:
    commands = (*packages.install("debian", ["x"]), "apt-get install -y y")
    step = ir.Run(title="t", commands=components.step_commands(commands))
    assert len(step_problems(step, "debian")) == 1


def test_the_toolchain_removal_cleans_up_too() -> None:
    for family in FAMILIES:
        _, remove = packages.toolchain(family, "python3")
        assert packages.leftovers(family)[0] in remove


def _removed(pattern_command: str, path: str) -> bool:
    words = pattern_command.split()
    assert words[:2] == ["rm", "-rf"]
    return any(
        fnmatch.fnmatchcase(path, w) or path.startswith(w.rstrip("/*") + "/") for w in words[2:]
    )


@pytest.mark.parametrize("path", MEASURED_APT)
def test_apt_cleanup_removes_what_differed(path: str) -> None:
    assert _removed(packages.leftovers("debian")[0], path)


@pytest.mark.parametrize("path", ["/var/lib/dpkg/status", "/var/lib/apt/extended_states", "/var"])
def test_apt_cleanup_keeps_the_package_database(path: str) -> None:
    assert not _removed(packages.leftovers("debian")[0], path)


def test_step_epoch_is_a_valid_zip_time() -> None:
    # a wheel built from source with SOURCE_DATE_EPOCH before 1980 fails (zip times)
    assert components.STEP_EPOCH >= 315532800
    assert components.step_commands(()) == ()
