"""Resolution: extends, matrix inheritance, digests, selection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml

from hepml_images.errors import SpecError, UsageError
from hepml_images.pipeline import resolve_specs
from hepml_images.resolve import ResolvedVariant, content_ref

if TYPE_CHECKING:
    from pathlib import Path

BASE = """\
name: base
base:
  image: debian:12
  family: debian
  release: bookworm
matrix:
  python: ["3.11"]
components:
  system-packages:
    packages: [curl]
"""

CHILD = """\
name: child
extends: base
matrix:
  accelerator: [cpu, cuda]
components:
  python:
    version: ${{ matrix.python }}
  tensorflow:
    version: "2.18.1"
    accelerator: ${{ matrix.accelerator }}
"""


def _reversed(data: object) -> object:
    if isinstance(data, dict):
        return {k: _reversed(v) for k, v in reversed(list(data.items()))}
    return data


def _write(tmp_path: Path, **files: str) -> None:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)


def test_child_variants_are_parent_variants_times_own_axes(tmp_path: Path) -> None:
    _write(tmp_path, base=BASE, child=CHILD)
    resolution = resolve_specs([str(tmp_path / "child.yaml")])
    slugs = [v.slug for v in resolution.selected]
    assert slugs == ["3.11-cpu", "3.11-cuda"]
    for variant in resolution.selected:
        assert variant.parent is not None
        assert variant.parent.spec == "base"
        assert variant.plan.base.ref == content_ref("base", variant.parent.digest)  # type: ignore[union-attr]


def test_digest_is_stable_and_ignores_key_order(tmp_path: Path) -> None:
    _write(tmp_path, base=BASE, child=CHILD)
    first = {v.key: v.digest for v in resolve_specs([str(tmp_path / "child.yaml")]).variants}
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump(_reversed(yaml.safe_load(CHILD)), sort_keys=False)
    )
    second = {v.key: v.digest for v in resolve_specs([str(tmp_path / "child.yaml")]).variants}
    assert first == second


def test_parent_change_changes_child_digest_and_smoke_change_does_not(tmp_path: Path) -> None:
    _write(tmp_path, base=BASE, child=CHILD)
    before = {v.key: v.digest for v in resolve_specs([str(tmp_path / "child.yaml")]).variants}
    _write(tmp_path, base=BASE.replace("[curl]", "[curl, git]"), child=CHILD)
    after = {v.key: v.digest for v in resolve_specs([str(tmp_path / "child.yaml")]).variants}
    assert all(before[key] != after[key] for key in before)
    _write(tmp_path, base=BASE, child=CHILD + "smoke: [python -V]\n")
    with_smoke = {v.key: v.digest for v in resolve_specs([str(tmp_path / "child.yaml")]).variants}
    assert with_smoke == before


def test_narrowing_an_inherited_axis(tmp_path: Path) -> None:
    base = BASE.replace('python: ["3.11"]', 'python: ["3.11", "3.12"]')
    child = CHILD.replace("matrix:\n", 'matrix:\n  python: ["3.11"]\n')
    _write(tmp_path, base=base, child=child)
    resolution = resolve_specs([str(tmp_path / "child.yaml")])
    assert {dict(v.matrix)["python"] for v in resolution.selected} == {"3.11"}


def test_narrowing_cannot_add_values(tmp_path: Path) -> None:
    child = CHILD.replace("matrix:\n", 'matrix:\n  python: ["3.13"]\n')
    _write(tmp_path, base=BASE, child=child)
    with pytest.raises(SpecError, match="not among the parent's values"):
        resolve_specs([str(tmp_path / "child.yaml")])


def test_exclude_and_include(tmp_path: Path) -> None:
    child = CHILD.replace(
        "  accelerator: [cpu, cuda]\n",
        "  accelerator: [cpu, cuda]\n  exclude:\n    - {accelerator: cuda}\n"
        "  include:\n    - {accelerator: cpu, flavour: small}\n",
    ).replace("tensorflow:\n", "tensorflow:\n    enabled: true\n")
    child += "labels:\n  org.example.flavour: ${{ matrix.flavour }}\n"
    _write(tmp_path, base=BASE, child=child)
    (variant,) = resolve_specs([str(tmp_path / "child.yaml")]).selected
    assert variant.slug == "3.11-cpu"
    assert ("org.example.flavour", "small") in variant.plan.labels


def test_tensorflow_cuda_versions_come_from_the_tested_configuration(tmp_path: Path) -> None:
    _write(tmp_path, base=BASE, child=CHILD)
    variants = resolve_specs([str(tmp_path / "child.yaml")], ["accelerator=cuda"]).selected
    (cuda,) = variants
    assert cuda.version_map["cuda"] == "12.5"
    assert cuda.version_map["cudnn"] == "9.3"
    assert ("NVIDIA_REQUIRE_CUDA", "cuda>=12.5 driver>=525.60.13") in cuda.handover.env


def test_select_rejects_unknown_key_with_suggestion(tmp_path: Path) -> None:
    _write(tmp_path, base=BASE, child=CHILD)
    with pytest.raises(UsageError) as info:
        resolve_specs([str(tmp_path / "child.yaml")], ["acclerator=cpu"])
    assert info.value.hint == "did you mean 'accelerator'?"
    with pytest.raises(UsageError, match="no variant has accelerator=rocm"):
        resolve_specs([str(tmp_path / "child.yaml")], ["accelerator=rocm"])


def test_shipped_default_environment() -> None:
    (variant,) = resolve_specs(["debian-tensorflow"], ["accelerator=cpu"]).selected
    chain = []
    node: ResolvedVariant | None = variant
    while node is not None:
        chain.append(node.spec)
        node = node.parent
    assert chain == ["debian-tensorflow", "debian-python", "debian-hdf5", "debian-base"]
    versions = variant.version_map
    assert versions["python"] == "3.11"
    assert versions["tensorflow"] == "2.21.0"
    assert "1.0.0-tf2.21.0-py3.11-cpu" in variant.tags
