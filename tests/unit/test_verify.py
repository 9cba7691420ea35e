"""``verify`` rebuilds with the backend that built the image, unless told otherwise."""

from __future__ import annotations

import pytest

from hepml_images.provenance import BUILDER_LABEL
from hepml_images.verify import rebuild_builder


@pytest.mark.parametrize("built_by", ["buildkit", "classic"])
def test_auto_rebuilds_with_the_backend_the_image_names(built_by: str) -> None:
    assert rebuild_builder("auto", {BUILDER_LABEL: built_by}) == built_by


@pytest.mark.parametrize("requested", ["buildkit", "classic"])
def test_an_explicit_builder_is_honoured(requested: str) -> None:
    other = "classic" if requested == "buildkit" else "buildkit"
    assert rebuild_builder(requested, {BUILDER_LABEL: other}) == requested


@pytest.mark.parametrize("labels", [{}, {BUILDER_LABEL: "kaniko"}])
def test_auto_stays_auto_without_a_known_backend(labels: dict[str, str]) -> None:
    # images from before the label, bootstrapped bases, or a value we do not know
    assert rebuild_builder("auto", labels) == "auto"
