"""The pipeline, wired in one place: spec → resolve → render (→ build → test → publish).

Every stage is a function of the previous one's output. ``resolve_specs`` and ``render_variants``
are pure; ``write_build_dir`` is the one place that writes rendered files to disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hepml_images import provenance
from hepml_images.engine import DIGEST_LABEL
from hepml_images.errors import UsageError
from hepml_images.render import Rendered, render
from hepml_images.resolve import ResolvedVariant, resolve, select
from hepml_images.spec import load as spec_load
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

Format = Literal["docker", "singularity", "all"]

#: The default environment: what `hepml-images build` builds without arguments (registry-free).
DEFAULT_SPECS = ("debian-tensorflow",)
DEFAULT_SELECTION = ("accelerator=cpu",)
#: SOURCE_DATE_EPOCH when neither the environment nor git gives one (see ``provenance``).
DEFAULT_EPOCH = provenance.DEFAULT_EPOCH
FILENAMES = {"docker": "Dockerfile", "singularity": "Singularity.def"}


@dataclass(frozen=True)
class Resolution:
    """The specs the user named, every variant (parents included) and the selected ones."""

    requested: tuple[str, ...]
    variants: tuple[ResolvedVariant, ...]
    selected: tuple[ResolvedVariant, ...]


def resolve_specs(
    arguments: Sequence[str], selection: Sequence[str] = (), *, search: Sequence[Path] = ()
) -> Resolution:
    """Load the named specs (and their parents), resolve them and select variants."""
    specset = spec_load.load(arguments, search=search)
    variants = resolve(specset)
    selected = select(variants, specset.requested, selection)
    return Resolution(specset.requested, variants, selected)


def resolve_directory(directory: Path) -> Resolution:
    """Every spec of a directory, all variants selected."""
    specset = spec_load.load_directory(directory)
    variants = resolve(specset)
    return Resolution(specset.requested, variants, variants)


def render_variants(variants: Sequence[ResolvedVariant]) -> list[tuple[ResolvedVariant, Rendered]]:
    """Render every variant's build files."""
    return [(variant, render(variant.plan)) for variant in variants]


def write_build_dir(rendered: Rendered, directory: Path, fmt: Format) -> list[Path]:
    """Write one variant's build files and context into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    texts = {"docker": rendered.dockerfile, "singularity": rendered.singularity}
    for kind, text in texts.items():
        if fmt in {kind, "all"}:
            path = directory / FILENAMES[kind]
            path.write_text(text, encoding="utf-8")
            written.append(path)
    for item in rendered.context:
        path = directory / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.content)
        os.chmod(path, item.mode)  # noqa: PTH101 - explicit mode, independent of umask
        written.append(path)
    return written


def variant_from_labels(labels: Mapping[str, str], what: str) -> ResolvedVariant:
    """The shipped variant that an image (or a SIF made from one) was built from, by its labels."""
    spec, slug, digest = (
        labels.get(k) for k in ("io.hepml.spec", "io.hepml.variant", DIGEST_LABEL)
    )
    if not spec or not slug:
        raise UsageError(
            f"{what} was not built by hepml-images (no io.hepml.spec label)",
            hint="test specs by name, or images that hepml-images built",
        )
    for variant in resolve_directory(shipped_dir()).variants:
        if variant.spec == spec and variant.slug == slug and variant.digest == digest:
            return variant
    raise UsageError(
        f"{what} was built from {spec}:{slug} with digest {digest}, which the shipped specs no"
        " longer produce",
        hint="test it by spec file: hepml-images test path/to/spec.yaml",
    )
