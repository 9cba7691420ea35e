"""Grid decisions: the epoch of a SIF, where SIFs are pushed, DUCC wishlists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml

from hepml_images import grid, publish
from hepml_images.errors import UsageError
from hepml_images.pipeline import resolve_specs
from hepml_images.provenance import DEFAULT_EPOCH

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant


def _default() -> ResolvedVariant:
    return resolve_specs(["debian-tensorflow"], ["accelerator=cpu"]).selected[0]


def test_epoch_comes_from_source_date_epoch_then_the_image() -> None:
    labels = {"org.opencontainers.image.created": "2024-05-01T12:00:00Z"}
    assert grid.epoch_for(labels, {"SOURCE_DATE_EPOCH": "42"}) == 42
    assert grid.epoch_for(labels, {}) == 1714564800
    assert grid.epoch_for({}, {}) == DEFAULT_EPOCH
    with pytest.raises(UsageError, match="not a number"):
        grid.epoch_for(labels, {"SOURCE_DATE_EPOCH": "yesterday"})


def test_sif_references_are_the_image_tags_with_a_suffix() -> None:
    variant = _default()
    pairs = publish.sif_references(variant, "127.0.0.1:5000/ns")
    refs = [ref for ref, _ in pairs]
    content = variant.content_ref.rsplit(":", 1)[1]
    assert pairs[0] == (f"127.0.0.1:5000/ns/debian-tensorflow:{content}-sif", True)
    immutable = {f"127.0.0.1:5000/ns/debian-tensorflow:{t}-sif" for t in variant.immutable_tags}
    assert {ref for ref, fixed in pairs[1:] if fixed} == immutable
    assert all(r.startswith("127.0.0.1:5000/ns/debian-tensorflow:") for r in refs)
    assert all(r.endswith("-sif") for r in refs)
    assert len(refs) == len(set(refs)) >= 2


def test_wishlist_pins_every_image_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    entries = [
        grid.WishlistEntry(repository="registry.cern.ch/atlas/ml", tag="t1", digest=digest),
        grid.WishlistEntry(repository="127.0.0.1:5000/ns/x", tag="t2", digest=digest),
        grid.WishlistEntry(repository="python", tag="3.11", digest=digest),
    ]
    text = grid.wishlist(entries, user="atlasml")
    document = yaml.safe_load(text)
    assert document == {
        "version": 1,
        "user": "atlasml",
        "cvmfs_repo": "unpacked.cern.ch",
        "output_format": "$(scheme)://$(registry)/thin/$(image)",
        "input": [
            f"https://registry.cern.ch/atlas/ml:t1@{digest}",
            f"http://127.0.0.1:5000/ns/x:t2@{digest}",
            f"https://registry.hub.docker.com/library/python:3.11@{digest}",
        ],
    }


def test_published_needs_every_image_in_the_registry() -> None:
    variant = _default()
    found = grid.published([variant], "reg.example/ns", lambda _ref: "sha256:" + "0" * 64)
    assert found[0].repository == "reg.example/ns/debian-tensorflow"
    with pytest.raises(UsageError, match="not published") as caught:
        grid.published([variant], "reg.example/ns", lambda _ref: None)
    assert caught.value.hint is not None
    assert "publish" in caught.value.hint
