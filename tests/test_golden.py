"""Golden files: every shipped spec and variant rendered and compared byte for byte.

The rendered files live under tests/golden/<spec>/<variant>/ and are reviewed like code.
Refresh them with ``pytest tests/test_golden.py --update-golden`` and review the diff.
Every golden Dockerfile must pass hadolint (with the project's short ignore list in
.hadolint.yaml) and every golden definition file must parse with spython.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hepml_images.ir import SetEnv
from hepml_images.pipeline import render_variants, resolve_directory
from hepml_images.spec.load import shipped_dir
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

RESOLUTION = resolve_directory(shipped_dir())
RENDERED = {f"{v.spec}/{v.slug}": r for v, r in render_variants(RESOLUTION.variants)}
VARIANTS = {f"{v.spec}/{v.slug}": v for v in RESOLUTION.variants}


def _files(key: str) -> dict[str, bytes]:
    rendered = RENDERED[key]
    files = {
        "Dockerfile": rendered.dockerfile.encode(),
        "Singularity.def": rendered.singularity.encode(),
    }
    files.update({f"context/{c.name}": c.content for c in rendered.context})
    return files


@pytest.mark.parametrize("key", sorted(RENDERED))
def test_golden(key: str, update_golden: bool) -> None:
    directory = GOLDEN / key
    expected = _files(key)
    if update_golden:
        for stale in directory.rglob("*") if directory.exists() else ():
            if stale.is_file() and str(stale.relative_to(directory)) not in expected:
                stale.unlink()
        for name, content in expected.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    on_disk = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert on_disk == set(expected), (
        f"golden files of {key} differ in names; refresh with --update-golden"
    )
    for name, content in expected.items():
        assert (directory / name).read_bytes() == content, (
            f"{key}/{name} differs from its golden file"
        )


def test_no_stale_golden_directories(update_golden: bool) -> None:
    present = {str(p.parent.relative_to(GOLDEN)) for p in GOLDEN.rglob("Dockerfile")}
    stale = present - set(RENDERED)
    if update_golden:
        for key in stale:
            for path in sorted((GOLDEN / key).rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            (GOLDEN / key).rmdir()
        stale = set()
    assert not stale, f"golden files without a variant: {sorted(stale)}"


def test_rendering_is_deterministic() -> None:
    again = {
        f"{v.spec}/{v.slug}": r
        for v, r in render_variants(resolve_directory(shipped_dir()).variants)
    }
    assert again == RENDERED


def test_hadolint_passes_every_golden_dockerfile() -> None:
    hadolint = require_tool("hadolint")
    dockerfiles = sorted(str(GOLDEN / key / "Dockerfile") for key in RENDERED)
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", *dockerfiles],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _spython_text(text: str) -> str:
    """spython's parser knows only docker bootstrap agents (it raises on anything else); a
    debootstrap header is swapped for a docker one so that the sections are still parsed."""
    if text.startswith("Bootstrap: debootstrap"):
        body = text.split("\n\n", 1)[1]
        return "Bootstrap: docker\nFrom: scratch\n\n" + body
    return text


@pytest.mark.parametrize("key", sorted(RENDERED))
def test_spython_parses_definition(key: str, tmp_path: Path) -> None:
    from spython.main.parse.parsers import SingularityParser

    text = (GOLDEN / key / "Singularity.def").read_text()
    path = tmp_path / "Singularity.def"
    path.write_text(_spython_text(text))
    recipe = next(iter(SingularityParser(str(path)).recipe.values()))
    assert recipe.fromHeader
    labels = dict(line.split(" ", 1) for line in recipe.labels)
    assert labels["io.hepml.spec"] == key.split("/", maxsplit=1)[0]
    assert labels["io.hepml.digest"].startswith("sha256:")
    # every ENV of the Dockerfile (and of the parents) is in %environment too
    plan = VARIANTS[key].plan
    expected = [
        *plan.inherited_env,
        *(pair for step in plan.steps if isinstance(step, SetEnv) for pair in step.items),
    ]
    environ = [line.removeprefix("export ") for line in recipe.environ]
    assert environ == [f'{name}="{value}"' for name, value in expected]
