"""Provenance: where labels come from, and that no credential reaches them."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from hepml_images import provenance
from hepml_images.pipeline import resolve_specs

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("url", "public"),
    [
        (
            "https://gitlab-ci-token:s3cret@gitlab.cern.ch/atlas/x.git",
            "https://gitlab.cern.ch/atlas/x.git",
        ),
        ("https://user@github.com:8443/o/r", "https://github.com:8443/o/r"),
        ("git@github.com:o/r.git", "github.com:o/r.git"),
        ("https://github.com/o/r", "https://github.com/o/r"),
    ],
)
def test_public_url_strips_credentials(url: str, public: str) -> None:
    assert provenance.public_url(url) == public


def _git(directory: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True)


def test_origin_from_git_and_from_the_environment(tmp_path: Path) -> None:
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\n", encoding="utf-8")
    outside = provenance.origin(spec, {})
    assert outside == provenance.Origin(epoch=provenance.DEFAULT_EPOCH)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "remote", "add", "origin", "https://tok:secret@example.org/g/r.git")
    _git(tmp_path, "add", "x.yaml")
    _git(
        tmp_path,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@e",
        "commit",
        "-q",
        "-m",
        "x",
        "--date=@1700000000",
    )
    inside = provenance.origin(spec, {})
    assert inside.revision is not None
    assert len(inside.revision) == 40
    assert inside.source == "https://example.org/g/r.git"
    assert not inside.dirty
    assert provenance.origin(spec, {"SOURCE_DATE_EPOCH": "1234"}).epoch == 1234
    spec.write_text("name: y\n", encoding="utf-8")
    assert provenance.origin(spec, {}).dirty


def test_build_labels() -> None:
    (variant,) = resolve_specs(["debian-hdf5"]).selected
    where = provenance.Origin(
        epoch=0, revision="a" * 40, source="https://example.org/r", dirty=True
    )
    labels = provenance.build_labels(
        where,
        spec_labels=variant.content.labels,
        parent_id="sha256:" + "b" * 64,
        created="1970-01-01T00:00:00Z",
        builder="buildkit",
    )
    assert labels["io.hepml.builder"] == "buildkit"
    assert set(labels) <= set(provenance.BUILD_LABEL_KEYS)  # verify passes them all again
    assert labels["org.opencontainers.image.revision"] == "a" * 40 + "-dirty"
    assert labels["org.opencontainers.image.source"] == "https://example.org/r"
    assert labels["org.opencontainers.image.base.digest"] == "sha256:" + "b" * 64
    assert labels["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    plan_labels = dict(variant.plan.labels)
    assert plan_labels["org.opencontainers.image.title"] == "debian-hdf5"
    assert plan_labels["org.opencontainers.image.base.name"] == variant.plan.base.ref  # type: ignore[union-attr]
    assert not set(labels) & set(plan_labels)  # build labels never change the content digest


def test_spec_labels_win_over_git_for_source_and_url() -> None:
    where = provenance.Origin(epoch=0, source="https://example.org/from-git")
    labels = provenance.build_labels(
        where,
        spec_labels=(("org.opencontainers.image.source", "https://example.org/from-spec"),),
        parent_id=None,
        created="1970-01-01T00:00:00Z",
    )
    assert labels["org.opencontainers.image.source"] == "https://example.org/from-spec"
    assert labels["org.opencontainers.image.url"] == "https://example.org/from-git"
    assert "io.hepml.builder" not in labels  # no backend (a bootstrapped base)
