"""The layers import downwards only: spec, resolve and components know nothing of render.

Read from the source with ``ast``, so imports under ``TYPE_CHECKING`` and inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hepml_images

PACKAGE = Path(hepml_images.__file__).parent

#: (modules, as globs under the package) -> what they must not import (a module and its children)
RULES: list[tuple[tuple[str, ...], str]] = [
    (("resolve.py", "components/**/*.py", "spec/**/*.py"), "hepml_images.render"),
    (("provenance.py",), "hepml_images.resolve"),
    (("ir.py",), "hepml_images"),
]


def imported(source: str) -> set[str]:
    """Every module an import statement names (``from a import b`` names ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(f"{forbidden}.")


def test_imported_sees_type_checking_and_from_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from hepml_images import render\n"
        "if TYPE_CHECKING:\n"
        "    from hepml_images.resolve import ResolvedVariant\n"
    )
    assert {"hepml_images.render", "hepml_images.resolve"} <= imported(source)
    assert not _within("hepml_images.renderer", "hepml_images.render")


@pytest.mark.parametrize(("globs", "forbidden"), RULES, ids=[globs[0] for globs, _ in RULES])
def test_layers(globs: tuple[str, ...], forbidden: str) -> None:
    modules = sorted({path for pattern in globs for path in PACKAGE.glob(pattern)})
    assert modules, f"no module matches {globs}"
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in modules
        for name in sorted(imported(path.read_text(encoding="utf-8")))
        if _within(name, forbidden)
    ]
    assert not offenders, "\n".join(offenders)


def test_only_the_engine_layer_imports_the_docker_sdk() -> None:
    engine = PACKAGE / "engine"
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if engine not in path.parents
        for name in sorted(imported(path.read_text(encoding="utf-8")))
        if _within(name, "docker")
    ]
    assert offenders == []
    inside = {name for path in engine.rglob("*.py") for name in imported(path.read_text())}
    assert any(_within(name, "docker") for name in inside), "the engine layer uses the SDK"
