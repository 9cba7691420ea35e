"""``verify``: rebuild an image from what it carries, without cache, and compare.

What an image carries says how it was made: ``io.hepml.spec``/``variant``/``digest`` name the
variant (found among the shipped specs and ``--specs`` directories, and only when its content
digest is the image's), ``org.opencontainers.image.base.digest`` names its parent's image ID
(which the engine must have under the parent's content tag: the rebuild is ``FROM`` exactly
that), ``org.opencontainers.image.created`` is the epoch it was built with, and the build labels
are the image's own. The rebuild runs with ``--no-cache`` under a throwaway tag, gets the same
canonical rewrite as every build, and is then compared: the same configuration digest and the
same layers, or, layer by layer, the paths that differ and in what (content, mode, owner,
time, link, extended attributes). The throwaway image is removed afterwards.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hepml_images import ir, layerdiff
from hepml_images.build.images import build_bootstrapped, build_dockerfile
from hepml_images.build.normalize import normalize
from hepml_images.engine import Activity, EngineError
from hepml_images.errors import BuildError, UsageError
from hepml_images.provenance import BUILD_LABEL_KEYS, BUILDER_LABEL, OCI
from hepml_images.publish import SMOKE_LABELS, stamped
from hepml_images.times import parse_rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from hepml_images.engine import Engine, Image
    from hepml_images.engine.buildkit import Backend
    from hepml_images.resolve import ResolvedVariant

#: Labels the rendered Dockerfile sets itself (the rest are the build's labels, passed again).
_BASE_DIGEST = f"{OCI}.base.digest"
_CREATED = f"{OCI}.created"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The image, its rebuild, and how they compare."""

    reference: str
    image_id: str
    rebuilt_id: str
    #: the configuration digests (None where the engine does not say)
    config: tuple[str | None, str | None]
    #: the fields of the image configuration that differ (``Env``, ``Labels`` …)
    config_fields: tuple[str, ...]
    layers: tuple[layerdiff.LayerComparison, ...]

    @property
    def identical(self) -> bool:
        """Same layers and same configuration."""
        return not self.config_fields and all(layer.identical for layer in self.layers)


def rebuild_builder(requested: str, labels: Mapping[str, str]) -> str:
    """The backend to rebuild with: ``auto`` means the one the image names (``BUILDER_LABEL``).

    The two backends' images differ (their history entries), so a BuildKit image rebuilt by the
    classic builder could never be identical; an explicit ``--builder`` is honoured as asked.
    """
    built_by = labels.get(BUILDER_LABEL)
    if requested == "auto" and built_by is not None and built_by in {"buildkit", "classic"}:
        return built_by
    return requested


def _epoch(image: Image, reference: str) -> int:
    created = image.labels.get(_CREATED)
    when = parse_rfc3339(created) if created else None
    if when is None:
        raise UsageError(
            f"{reference} has no {_CREATED} label: the epoch it was built with is unknown",
            hint="verify images that hepml-images built",
        )
    return when


def _parent_layers(engine: Engine, variant: ResolvedVariant, image: Image) -> int:
    """How many layers the parent gives; the parent must be exactly the one it was built on."""
    if variant.parent is None:
        base = variant.plan.base
        if isinstance(base, ir.FromImage):
            found = engine.image(base.ref)
            if found is None:
                raise UsageError(
                    f"the base image {base.ref} is not in the engine",
                    hint=f"pull it first (docker pull {base.ref})",
                )
            return len(found.layers)
        return 0
    wanted = image.labels.get(_BASE_DIGEST)
    parent = engine.image(variant.parent.content_ref)
    if parent is None or (wanted and parent.id != wanted):
        now = "is not in the engine" if parent is None else f"is {parent.id[:19]} now"
        raise UsageError(
            f"the parent it was built on ({variant.parent.content_ref} = {wanted}) {now}",
            hint="pull or build exactly that parent first (verify rebuilds FROM it)",
        )
    return len(parent.layers)


def _config_fields(a: Image, b: Image) -> tuple[str, ...]:
    keys = sorted(set(a.config) | set(b.config))
    fields = [key for key in keys if a.config.get(key) != b.config.get(key)]
    if a.architecture != b.architecture:
        fields.append("architecture")
    if a.created != b.created:
        fields.append("created")
    return tuple(fields)


def _saved_layers(engine: Engine, image_id: str, tmp: Path) -> list[layerdiff.Layer]:
    path = tmp / f"{image_id.removeprefix('sha256:')[:16]}.tar"
    with path.open("wb") as sink:
        for chunk in engine.save(image_id):
            sink.write(chunk)
    try:
        return layerdiff.read_saved_image(path)
    except layerdiff.LayerFormatError as exc:
        raise BuildError(f"cannot read the engine's archive of {image_id}: {exc}") from None
    finally:
        path.unlink()


def _same(a: Image, b: Image) -> bool:
    """The same image: the same ID, or (across stores) the same configuration digest."""
    if a.id == b.id:
        return True
    return a.config_digest is not None and a.config_digest == b.config_digest


def compare(engine: Engine, image: Image, rebuilt: Image, reference: str) -> Verdict:
    """How two images compare (the layers' files only read where the diff IDs differ)."""
    config_fields = _config_fields(image, rebuilt)
    same_layers = tuple(image.layers) == tuple(rebuilt.layers)
    if same_layers and not config_fields and not _same(image, rebuilt):
        # the same layers, Env, Labels …: what is left of a configuration is its history
        config_fields = ("history",)
    if same_layers:
        layers = tuple(
            layerdiff.LayerComparison(index=n, diff_id_a=d, diff_id_b=d, differences=())
            for n, d in enumerate(image.layers)
        )
    else:
        with tempfile.TemporaryDirectory(prefix="hepml-verify-") as tmp:
            ours = _saved_layers(engine, image.id, Path(tmp))
            theirs = _saved_layers(engine, rebuilt.id, Path(tmp))
        layers = layerdiff.compare_images(ours, theirs)
    return Verdict(
        reference=reference,
        image_id=image.id,
        rebuilt_id=rebuilt.id,
        config=(image.config_digest, rebuilt.config_digest),
        config_fields=config_fields,
        layers=layers,
    )


@contextlib.contextmanager
def _throwaway(engine: Engine, tag: str, keep: bool) -> Iterator[None]:  # noqa: FBT001
    try:
        yield
    finally:
        if not keep:
            for name in (f"{tag}-tested", tag):
                with contextlib.suppress(EngineError):
                    engine.remove_image(name, force=True)


def verify(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    image: Image,
    variant: ResolvedVariant,
    *,
    reference: str,
    log: IO[str],
    progress: Callable[[str], None],
    backend: Backend | None,
    ca_url: str | None,
    keep: bool = False,
) -> Verdict:
    """Rebuild ``image`` (built from ``variant``) without cache and compare (module doc)."""
    epoch = _epoch(image, reference)
    keep_layers = _parent_layers(engine, variant, image)
    smoke = {k: v for k, v in image.labels.items() if k in SMOKE_LABELS}
    # the build's own labels, as the build passed them (the rest come from the Dockerfile and
    # the parent); the spec's source/url override git's in the rendered LABEL already
    labels: Mapping[str, str] = {k: image.labels[k] for k in BUILD_LABEL_KEYS if k in image.labels}
    tag = f"hepml-verify/{variant.spec}:{uuid.uuid4().hex[:16]}"
    activity = Activity(cancel=threading.Event())
    with _throwaway(engine, tag, keep):
        if isinstance(variant.plan.base, ir.FromBootstrap):
            rebuilt_id = build_bootstrapped(
                engine,
                variant,
                log=log,
                progress=progress,
                activity=activity,
                epoch=epoch,
                no_cache=True,
                ca_url=ca_url,
                labels=labels,
                tag=tag,
            )
        else:
            built = build_dockerfile(
                engine,
                variant,
                log=log,
                progress=progress,
                activity=activity,
                no_cache=True,
                ca_url=ca_url,
                labels=labels,
                epoch=epoch,
                backend=backend,
                tag=tag,
            )
            rebuilt_id = normalize(
                engine,
                built,
                parent_layers=keep_layers,
                epoch=epoch,
                tag=tag,
                progress=progress,
            )
        if smoke:  # a published image: the tested one stamped with its result, the same way
            rebuilt_id = stamped(engine, rebuilt_id, smoke, f"{tag}-tested")
        rebuilt = engine.image(rebuilt_id)
        if rebuilt is None:
            raise BuildError(f"the rebuild of {reference} left no image")
        progress("comparing")
        return compare(engine, image, rebuilt, reference)
