"""The pipeline, wired in one place: spec → resolve → render → build → test → grid → publish.

Each stage is a function that takes the previous stage's result and returns its own:

    resolve_specs / resolve_directory  → Resolution        (pure)
    render_variants                    → [(variant, Rendered)] (pure; outputs.write_build_dir)
    build                              → Built             (engine: images in extends order)
    smoke_test_built / smoke_test      → Tested            (engine: check containers)
    make_sifs / make_sandbox           → [(variant, Made)] (engine, mksquashfs / Apptainer)
    smoke_test_sifs                    → Tested
    publish_images / publish_sifs      → [Published] / [SifPublished] (engine, registry)

``run_build`` is the ``build`` command's whole flow and the place where its rules live: what is
tested, when grid images are made, and that nothing is published unless every build and every
test passed. Progress and results leave the pipeline through ``Events``, which the CLI's display
implements; nothing here prints, exits or decides how things look.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from hepml_images import grid, ir, noop, outputs, provenance
from hepml_images import publish as publishing
from hepml_images import verify as verifying
from hepml_images.build.ca import CaServer, bridge_gateway, read_bundle
from hepml_images.build.graph import (
    Builder,
    Options,
    Outcome,
    PullFrom,
    State,
    closure,
    up_to_date,
)
from hepml_images.engine import DIGEST_LABEL, EngineError, buildkit, connect, flavour
from hepml_images.errors import (
    BuildFailed,
    HepmlError,
    Interrupted,
    TestsFailed,
    UsageError,
)
from hepml_images.render import Rendered, render
from hepml_images.resolve import ResolvedVariant, resolve, select
from hepml_images.sif import check as sif_check
from hepml_images.sif import make as make_sif
from hepml_images.smoke import session
from hepml_images.smoke.runner import GpuMode, probe_gpu_host
from hepml_images.spec import load as spec_load
from hepml_images.spec.load import shipped_dir
from hepml_images.times import rfc3339, source_date_epoch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from hepml_images.engine import Engine
    from hepml_images.engine.buildkit import Backend
    from hepml_images.sif.make import Made
    from hepml_images.smoke.runner import GpuHost
    from hepml_images.smoke.session import ImageReport

SifBuilder = Literal["auto", "native", "apptainer"]
#: (variant, image ID): what the stages after the build hand on
Target = tuple[ResolvedVariant, str]

#: The default environment: what `hepml-images build` builds without arguments (registry-free).
DEFAULT_SPECS = ("debian-tensorflow",)
DEFAULT_SELECTION = ("accelerator=cpu",)
#: SOURCE_DATE_EPOCH when neither the environment nor git gives one (see ``provenance``).
DEFAULT_EPOCH = provenance.DEFAULT_EPOCH


class Events(Protocol):
    """How the pipeline reports progress and results (the CLI's display implements it)."""

    def note(self, message: str) -> None:
        """One line of information (a skipped step, a retry, a file written)."""

    def building(self, outcomes: Sequence[Outcome]) -> contextlib.AbstractContextManager[None]:
        """Show the builds while they run; ``outcome`` is called on every change."""

    def outcome(self, outcome: Outcome) -> None:
        """One image's build changed state or step (called from build threads)."""

    def built(self, outcomes: Sequence[Outcome]) -> None:
        """The builds ended: the summary, and why each failed one failed."""

    def step(self, what: str) -> contextlib.AbstractContextManager[Callable[[str, int, int], None]]:
        """Progress of a slow step (SIF, sandbox): ``(step, done, total)``."""

    def tested(self, reports: Sequence[ImageReport]) -> None:
        """Smoke-test results of images or SIF files."""

    def published(self, results: Sequence[publishing.Published], *, dry_run: bool) -> None:
        """What happened to each tag."""

    def sifs_published(self, rows: Sequence[publishing.SifPublished]) -> None:
        """What happened to each SIF artifact."""


# --- resolve and render (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """The specs the user named, every variant (parents included) and the selected ones."""

    requested: tuple[str, ...]
    variants: tuple[ResolvedVariant, ...]
    selected: tuple[ResolvedVariant, ...]


def selection(
    specs: Sequence[str] | None, variant: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The specs and matrix selection to work on: the default environment when none is named."""
    if specs:
        return list(specs), list(variant or [])
    return list(DEFAULT_SPECS), list(variant or DEFAULT_SELECTION)


def resolve_specs(
    arguments: Sequence[str],
    selection: Sequence[str] = (),
    *,
    search: Sequence[Path] = (),
    trace: spec_load.Trace | None = None,
    check_locks: bool = True,
) -> Resolution:
    """Load the named specs (and their parents), resolve them and select variants.

    ``trace`` collects what the answer depended on (``spec.load.Trace``); ``check_locks``: see
    ``resolve.resolve``.
    """
    specset = spec_load.load(arguments, search=search, trace=trace)
    variants = resolve(specset, check_locks=check_locks)
    selected = select(variants, specset.requested, selection)
    return Resolution(specset.requested, variants, selected)


def resolve_directory(
    directory: Path, *, check_locks: bool = True, selection: Sequence[str] = ()
) -> Resolution:
    """Every spec of a directory, all variants selected (or those matching ``selection``)."""
    specset = spec_load.load_directory(directory)
    variants = resolve(specset, check_locks=check_locks)
    chosen = select(variants, specset.requested, selection) if selection else variants
    return Resolution(specset.requested, variants, chosen)


def render_variants(variants: Sequence[ResolvedVariant]) -> list[tuple[ResolvedVariant, Rendered]]:
    """Render every variant's build files."""
    return [(variant, render(variant.plan)) for variant in variants]


def write_rendered(
    rendered: Sequence[tuple[ResolvedVariant, Rendered]],
    directory: Path,
    fmt: outputs.Format,
    events: Events,
) -> None:
    """Write rendered build files: into ``directory``, or a subfolder per variant if several."""
    for variant, files in rendered:
        subdir = None if len(rendered) == 1 else variant.slug
        written = outputs.write_build_dir(files, directory, fmt, subdir=subdir)
        names = [p.name for p in written if p.name in outputs.FILENAMES.values()]
        target = directory if subdir is None else directory / subdir
        events.note(
            f"{variant.key}: wrote {', '.join(names)} and"
            f" {len(written) - len(names)} context file(s) to {target}"
        )


def variant_from_labels(
    labels: Mapping[str, str], what: str, *, search: Sequence[Path] = ()
) -> ResolvedVariant:
    """The variant an image (or a SIF made from one) was built from, found by its labels.

    Looked up among the shipped specs and the specs of each directory in ``search``.
    """
    spec, slug, digest = (
        labels.get(k) for k in ("io.hepml.spec", "io.hepml.variant", DIGEST_LABEL)
    )
    if not spec or not slug:
        raise UsageError(
            f"{what} was not built by hepml-images (no io.hepml.spec label)",
            hint="test specs by name, or images that hepml-images built",
        )
    for directory in (*search, shipped_dir()):
        for variant in resolve_directory(directory).variants:
            if variant.spec == spec and variant.slug == slug and variant.digest == digest:
                return variant
    raise UsageError(
        f"{what} was built from {spec}:{slug} with digest {digest}, which "
        + (
            "neither the shipped specs nor --specs produce"
            if search
            else "the shipped specs do not produce"
        ),
        hint="name the directory of its spec with --specs DIR (or test by spec file:"
        " hepml-images test path/to/spec.yaml)",
    )


# --- build ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    """How ``build`` builds (its options, resolved)."""

    jobs: int = 2
    no_cache: bool = False
    ca_bundle: Path | None = None
    log_dir: Path
    #: ``REGISTRY[/NS]`` to pull images from by content tag before building them
    pull_from: str | None = None
    #: ``auto``, ``buildkit`` or ``classic`` (``engine.buildkit.choose``)
    builder: str = "auto"


@dataclass(frozen=True, kw_only=True)
class Built:
    """Every image of the closure of the selection, in build order."""

    outcomes: tuple[Outcome, ...]
    t0: float
    interrupted: bool

    @property
    def failed(self) -> tuple[Outcome, ...]:
        """Images that were neither built nor up to date."""
        return tuple(o for o in self.outcomes if not o.state.ok)


def epoch(environ: Mapping[str, str]) -> int:
    """The build's SOURCE_DATE_EPOCH (the default when it is not set)."""
    found = source_date_epoch(environ)
    return DEFAULT_EPOCH if found is None else found


def choose_backend(engine: Engine, requested: str, environ: Mapping[str, str]) -> Backend:
    """The build backend for ``--builder REQUESTED`` on this engine (see ``engine.buildkit``)."""
    version = engine.version()
    return buildkit.choose(requested, version, flavour(version), env=environ)


def pull_source(namespace: str, note: Callable[[str], None]) -> PullFrom:
    """``--pull-from``: manifests read over the registry API, credentials from ``registry``."""
    from hepml_images.registry import credentials, parse_reference  # noqa: PLC0415
    from hepml_images.registry.http import manifest_digest  # noqa: PLC0415 - requests is heavy

    parse_reference(f"{namespace.rstrip('/')}/probe:tag")  # a malformed namespace fails here

    def auth(registry: str) -> Mapping[str, str] | None:
        found = credentials(registry)
        return None if found is None else found.auth_config(registry)

    return PullFrom(
        namespace=namespace,
        lookup=lambda ref: manifest_digest(ref, note=note, sleep=time.sleep),
        auth=auth,
    )


def build(
    resolution: Resolution,
    settings: BuildSettings,
    events: Events,
    *,
    engine_factory: Callable[[], Engine] = connect,
    environ: Mapping[str, str] = os.environ,
) -> Built:
    """Build the selected variants and their parents (what is up to date is not rebuilt).

    An interruption (KeyboardInterrupt) stops the running builds and is reported in ``Built``.
    """
    default_epoch = epoch(environ)
    bundle = read_bundle(settings.ca_bundle) if settings.ca_bundle is not None else None
    control = engine_factory()
    backend = choose_backend(control, settings.builder, environ)

    def first_build() -> None:
        events.note(f"build backend: {backend.label} ({backend.reason})")
        if backend.name == "classic":
            events.note(
                "the classic builder is deprecated by Docker; its layers get the same canonical"
                " rewrite, but its images are not the BuildKit backend's (other history)"
            )

    origins: dict[str, provenance.Origin] = {}

    def origin_of(variant: ResolvedVariant) -> provenance.Origin:
        if variant.source not in origins:
            origins[variant.source] = provenance.origin(Path(variant.source))
        return origins[variant.source]

    with contextlib.ExitStack() as stack:
        ca_url = None
        if bundle is not None:
            ca_url = stack.enter_context(CaServer(bundle, bridge_gateway(control))).url
        options = Options(
            jobs=settings.jobs,
            no_cache=settings.no_cache,
            epoch=default_epoch,
            log_dir=settings.log_dir,
            ca_url=ca_url,
            labels=lambda v, parent_id: provenance.build_labels(
                origin_of(v),
                spec_labels=v.content.labels,
                parent_id=parent_id,
                created=rfc3339(origin_of(v).epoch),
                # a bootstrapped base is written by us, not by a build backend
                builder=None if isinstance(v.plan.base, ir.FromBootstrap) else backend.name,
            ),
            epoch_of=lambda v: origin_of(v).epoch,
            pull=None
            if settings.pull_from is None
            else pull_source(settings.pull_from, events.note),
            backend=backend,
            first_build=first_build,
        )
        builder = Builder(engine_factory, resolution.selected, options, report=events.outcome)
        interrupted = False
        try:
            with events.building(list(builder.outcomes.values())):
                outcomes = builder.run()
        except KeyboardInterrupt:
            interrupted = True
            outcomes = list(builder.outcomes.values())
    events.built(outcomes)
    return Built(outcomes=tuple(outcomes), t0=builder.t0, interrupted=interrupted)


# --- test -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Tested:
    """Smoke-test reports (of images, or of SIF files made from them)."""

    reports: tuple[ImageReport, ...] = ()

    @property
    def passed(self) -> bool:
        """No check of any report failed."""
        return all(r.passed for r in self.reports)


def gpu_host(engine: Engine | None) -> Callable[[], GpuHost]:
    """Probe the GPU host once, when the first GPU check asks."""
    found: list[GpuHost] = []

    def host() -> GpuHost:
        if not found:
            found.append(probe_gpu_host(engine))
        return found[0]

    return host


def smoke_test(engine: Engine, targets: Sequence[Target], gpu: GpuMode, events: Events) -> Tested:
    """Smoke-test (variant, image ID) pairs; store each result under its image ID."""
    host = gpu_host(engine)
    reports = []
    for variant, image_id in targets:
        events.note(f"testing {variant.content_ref} ({image_id[7:19]}) …")
        report = session.check_image(engine, variant, image_id, gpu=gpu, host=host)
        session.save(report)
        reports.append(report)
    events.tested(reports)
    return Tested(reports=tuple(reports))


def to_test(built: Built, selected: Sequence[ResolvedVariant] = ()) -> list[Target]:
    """What a build hands to the smoke tests: built images, and up-to-date ones not yet passed.

    An image that is up to date and has a passing result for its exact ID is not tested again.
    A pulled image is tested only when it is one of the ``selected`` (the run's own images: their
    report, and the publish gate, need a result of this host); pulled parents are trusted by the
    smoke-test result they carry, which the pull checked.
    """
    targets = []
    for outcome in built.outcomes:
        if not outcome.state.ok:
            continue
        if outcome.state is State.PULLED and outcome.variant not in selected:
            continue
        image_id = outcome.image_id or ""
        earlier = session.load_result(image_id)
        if outcome.state is State.UP_TO_DATE and earlier and earlier.get("passed"):
            continue
        targets.append((outcome.variant, image_id))
    return targets


def smoke_test_built(
    engine: Engine,
    built: Built,
    gpu: GpuMode,
    events: Events,
    selected: Sequence[ResolvedVariant] = (),
) -> Tested:
    """Smoke-test what a build produced (see ``to_test``)."""
    targets = to_test(built, selected)
    for outcome in built.outcomes:
        pair = (outcome.variant, outcome.image_id or "")
        if outcome.state is State.PULLED and pair not in targets:
            events.note(
                f"{outcome.variant.key}: pulled from {outcome.pulled_from}, which passed its smoke"
                " tests (io.hepml.smoke.result); not tested again"
            )
        elif outcome.state.ok and pair not in targets:
            earlier = session.load_result(outcome.image_id or "") or {}
            events.note(
                f"{outcome.variant.key}: up to date, passed its smoke tests at"
                f" {earlier.get('finished', '?')} (same image ID)"
            )
    try:
        return smoke_test(engine, targets, gpu, events)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while smoke-testing: the test containers were removed",
            hint="hepml-images test runs the smoke tests again without rebuilding",
        ) from None


def built_images(
    engine: Engine, specs: Sequence[str] | None, variant: Sequence[str] | None
) -> list[Target]:
    """The selected variants and their image IDs; a clear error for any not built yet."""
    names, chosen = selection(specs, variant)
    resolution = resolve_specs(names, chosen)
    found: list[Target] = []
    missing = []
    for resolved in resolution.selected:
        image_id = up_to_date(engine, resolved)
        if image_id is None:
            missing.append(resolved.key)
        else:
            found.append((resolved, image_id))
    if missing:
        raise UsageError(
            f"not built yet: {', '.join(missing)}",
            hint="build (and test) them first: hepml-images build " + " ".join(names),
        )
    return found


def image_target(engine: Engine, reference: str, *, search: Sequence[Path] = ()) -> Target:
    """The variant an image was built from (through its labels) and its ID."""
    image = engine.image(reference)
    if image is None:
        raise UsageError(f"no image {reference} in the local engine")
    return variant_from_labels(image.labels, reference, search=search), image.id


def looks_like_image(argument: str) -> bool:
    """An image reference or ID rather than a spec name or file."""
    return (":" in argument or argument.startswith("sha256")) and not argument.endswith(".yaml")


def targets(
    engine: Engine,
    arguments: Sequence[str],
    variant: Sequence[str] | None,
    *,
    search: Sequence[Path] = (),
) -> list[Target]:
    """Image references and specs (their built images) as (variant, image ID) pairs."""
    images = [t for t in arguments if looks_like_image(t)]
    specs = [t for t in arguments if t not in images]
    pairs = [image_target(engine, ref, search=search) for ref in images]
    if specs or not images:
        pairs.extend(built_images(engine, specs, variant))
    return pairs


# --- grid images ----------------------------------------------------------------------------


def apptainer_for(builder: SifBuilder) -> str | None:
    """The Apptainer command that makes SIFs, or None for the native path."""
    found = make_sif.find_apptainer()
    if builder == "apptainer" and found is None:
        raise UsageError(
            "--builder apptainer: neither apptainer nor singularity is on PATH",
            hint="install Apptainer, or use --builder native (the default without it)",
        )
    return None if builder == "native" else found


def make_sifs(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    pairs: Sequence[Target],
    events: Events,
    *,
    output: Path | None,
    builder: SifBuilder,
    allow_untested: bool,
    reuse: bool = False,
    environ: Mapping[str, str] = os.environ,
    compression: make_sif.Compression = "gzip",
) -> list[tuple[ResolvedVariant, Made]]:
    """Make the SIF file of each tested image (``output``: a file for one, else a directory)."""
    apptainer = apptainer_for(builder)
    if compression != "gzip":
        if builder == "apptainer":
            raise UsageError(f"--compression {compression} is for the native builder only")
        apptainer = None
    single = output is not None and output.suffix == ".sif"
    if single and len(pairs) > 1:
        raise UsageError(f"-o {output} names one file, but {len(pairs)} images are selected")
    made = []
    for variant, image_id in pairs:
        ref, tested_id = grid.tested_image(engine, variant, image_id, allow_untested=allow_untested)
        found = engine.image(tested_id)
        labels = dict(found.labels) if found is not None else {}
        target = output if single and output else (output or Path()) / grid.sif_filename(variant)
        if reuse and target.is_file() and sif_check.sif_labels(target) == labels:
            events.note(f"{variant.key}: {target} is up to date (same tested image)")
            made.append((variant, make_sif.existing(target, tested_id, ref)))
            continue
        events.note(f"{variant.key}: making {target} from {ref} …")
        with events.step(variant.key) as progress:
            result = make_sif.make_sif(
                engine,
                tested_id,
                target,
                reference=ref,
                epoch=grid.epoch_for(labels, environ),
                progress=progress,
                apptainer=apptainer,
                compression=compression,
            )
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
        events.note(
            f"{variant.key}: wrote {result.path} ({result.size / 1e6:.1f} MB, sha256"
            f" {result.sha256[:16]}…; {steps})"
        )
        made.append((variant, result))
    return made


def make_sandbox(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    target: Target,
    output: Path,
    events: Events,
    *,
    allow_untested: bool,
    environ: Mapping[str, str] = os.environ,
) -> Made | None:
    """Unpack the tested image into ``output``; None when it already holds that image."""
    variant, image_id = target
    ref, tested_id = grid.tested_image(engine, variant, image_id, allow_untested=allow_untested)
    found = engine.image(tested_id)
    labels = dict(found.labels) if found is not None else {}
    held = output / ".singularity.d" / "labels.json"
    if held.is_file() and json.loads(held.read_text(encoding="utf-8")) == labels:
        events.note(f"{variant.key}: the sandbox {output} is up to date (same tested image)")
        return None
    with events.step(variant.key) as progress:
        made = make_sif.make_sandbox(
            engine,
            tested_id,
            output,
            epoch=grid.epoch_for(labels, environ),
            progress=progress,
        )
    events.note(
        f"{variant.key}: wrote the sandbox {made.path} from {ref} ({made.size / 1e6:.1f} MB);"
        f" run it with: apptainer exec --cleanenv {made.path} COMMAND"
    )
    return made


def grid_outputs(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    pairs: Sequence[Target],
    events: Events,
    *,
    sif_dir: Path | None,
    allow_untested: bool,
    sandboxes: bool,
) -> list[tuple[ResolvedVariant, Made]]:
    """``--sif`` of build and publish: the SIFs (and sandboxes) the specs' ``singularity`` asks."""
    wanted = [(v, i) for v, i in pairs if v.content.singularity.sif]
    for variant, _ in pairs:
        if not variant.content.singularity.sif:
            events.note(f"{variant.key}: no SIF (singularity.sif is false)")
    try:
        made = make_sifs(
            engine,
            wanted,
            events,
            output=sif_dir,
            builder="auto",
            allow_untested=allow_untested,
            reuse=True,
        )
        if sandboxes:
            for variant, image_id in pairs:
                if variant.content.singularity.sandbox:
                    where = (sif_dir or Path()) / grid.sif_filename(variant).removesuffix(".sif")
                    make_sandbox(
                        engine, (variant, image_id), where, events, allow_untested=allow_untested
                    )
    except KeyboardInterrupt:
        raise Interrupted("interrupted: partial SIF files and sandboxes were removed") from None
    return made


def smoke_test_sifs(
    paths: Sequence[Path],
    gpu: GpuMode,
    events: Events,
    *,
    search: Sequence[Path] = (),
    variants: Sequence[ResolvedVariant] | None = None,
) -> Tested:
    """Smoke-test SIF files: Apptainer when installed, else their root filesystem on the engine.

    ``variants`` (one per path) are the variants the SIFs were just made from (``sif``,
    ``build --sif``): their checks are used as they are, wherever their spec lives. Without
    them, each SIF's variant is looked up by its labels in ``search`` and the shipped specs.
    """
    apptainer = make_sif.find_apptainer()
    engine = None if apptainer else connect()
    host = gpu_host(engine)
    reports = []
    for index, path in enumerate(paths):
        if not path.is_file():
            raise UsageError(f"no SIF file {path}")
        labels = sif_check.sif_labels(path)
        if variants is not None:
            found = variants[index]
        else:
            found = variant_from_labels(labels, str(path), search=search)
        how = "apptainer exec --cleanenv" if apptainer else "its root filesystem on the engine"
        events.note(f"testing {path} ({how}) …")
        try:
            reports.append(
                sif_check.check_sif(
                    engine,
                    found,
                    path,
                    gpu=gpu,
                    host=host,
                    apptainer=apptainer,
                    epoch=grid.epoch_for(labels, {}),
                )
            )
        except KeyboardInterrupt:
            raise Interrupted("interrupted: the test containers and image were removed") from None
    events.tested(reports)
    return Tested(reports=tuple(reports))


def smoke_test_arguments(
    arguments: Sequence[str],
    variant: Sequence[str] | None,
    gpu: GpuMode,
    events: Events,
    *,
    search: Sequence[Path] = (),
) -> tuple[Tested, Tested, list[Path]]:
    """``hepml-images test``: the images that specs and references name, and SIF files.

    Without arguments, the default environment's image. Returns the images' reports, the SIF
    files' reports and the SIF files.
    """
    sifs = [Path(a) for a in arguments if a.endswith(".sif")]
    rest = [a for a in arguments if not a.endswith(".sif")]
    images = Tested()
    if rest or not sifs:
        engine = connect()
        images = smoke_test(engine, targets(engine, rest, variant, search=search), gpu, events)
    tested = smoke_test_sifs(sifs, gpu, events, search=search) if sifs else Tested()
    return images, tested, sifs


# --- publish --------------------------------------------------------------------------------


def publish_images(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    pairs: Sequence[Target],
    events: Events,
    *,
    registry: str | None,
    dry_run: bool,
    force: bool,
    content_only: bool = False,
) -> tuple[list[publishing.Published], publishing.PublishFailed | None]:
    """Gate and push every image under its tags (``content_only``: its content tag only)."""
    results = publishing.publish(
        engine,
        pairs,
        registry=registry,
        dry_run=dry_run,
        force=force,
        note=events.note,
        content_only=content_only,
    )
    events.published(results, dry_run=dry_run)
    return results, publishing.failure(results)


def publish_sifs(
    made: Sequence[tuple[ResolvedVariant, Made]],
    events: Events,
    *,
    registry: str | None,
    force: bool,
) -> tuple[list[publishing.SifPublished], publishing.PublishFailed | None]:
    """Push every SIF as an ORAS artifact; the results and the error to end with."""
    rows = publishing.publish_sifs(made, registry, force=force, note=events.note)
    events.sifs_published(rows)
    return rows, publishing.sif_failure(rows)


def publish_all(  # noqa: PLR0913 - keyword-only settings
    engine: Engine,
    pairs: Sequence[Target],
    events: Events,
    *,
    registry: str | None,
    dry_run: bool,
    force: bool,
    sif: bool,
    sif_dir: Path | None,
) -> tuple[
    list[publishing.Published], list[publishing.SifPublished], publishing.PublishFailed | None
]:
    """``hepml-images publish``: the images, then (``sif``) their SIFs, only if all went well.

    A dry run pushes nothing and makes no SIF.
    """
    rows, problem = publish_images(
        engine, pairs, events, registry=registry, dry_run=dry_run, force=force
    )
    if not sif or problem is not None or dry_run:
        return rows, [], problem
    made = grid_outputs(
        engine, pairs, events, sif_dir=sif_dir, allow_untested=False, sandboxes=False
    )
    sif_rows, problem = publish_sifs(made, events, registry=registry, force=force)
    return rows, sif_rows, problem


# --- the build command's flow ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """What ``hepml-images build`` was asked to do."""

    specs: tuple[str, ...] = ()
    variant: tuple[str, ...] = ()
    settings: BuildSettings
    test: bool = True
    gpu: GpuMode = GpuMode.auto
    sif: bool = False
    sif_dir: Path | None = None
    push: bool = False
    registry: str | None = None
    force: bool = False
    #: ``REGISTRY[/NS]``: push every image built here under its content tag (any branch)
    push_cache: str | None = None
    #: record the resolution for the no-op path (``noop.remember``): the command line's builds
    remember: bool = False


@dataclass(kw_only=True)
class BuildRun:
    """Everything a ``build`` did; ``error`` is how it ends (None: success)."""

    built: Built
    tested: Tested = field(default_factory=Tested)
    sifs: list[tuple[ResolvedVariant, Made]] = field(default_factory=list)
    sif_tested: Tested = field(default_factory=Tested)
    published: list[publishing.Published] = field(default_factory=list)
    #: the content tags pushed to the cache repository (``push_cache``)
    cached: list[publishing.Published] = field(default_factory=list)
    sifs_published: list[publishing.SifPublished] = field(default_factory=list)
    error: HepmlError | None = None


def run_build(
    request: BuildRequest,
    events: Events,
    *,
    engine_factory: Callable[[], Engine] = connect,
    environ: Mapping[str, str] = os.environ,
) -> BuildRun:
    """Build → test → grid images → publish, each stage only when the ones before succeeded.

    - an interrupted build ends the run (``Interrupted``): finished images are kept;
    - the images built (or up to date without a passing result) are smoke-tested unless
      ``test`` is off;
    - SIF files (``sif``) are made only when every build and test passed, and are tested too;
    - nothing is pushed unless every build, image test and SIF test passed; SIFs are pushed
      only after their images were published without a problem;
    - ``push_cache``: every image built here (not the pulled or up-to-date ones) goes to the
      cache namespace under its content tag only, through the publish gate, before publishing
      (a cache failure is the run's error but does not stop publishing: the cache only saves
      time).
    """
    names, chosen = selection(request.specs, request.variant)
    trace = spec_load.Trace()
    resolution = resolve_specs(names, chosen, trace=trace)
    for variant in resolution.variants:  # a user's spec without a lock: unpinned, and said so
        if variant.lock_note is not None and (
            variant.lock_inputs.requirements or variant.lock_inputs.os_packages
        ):
            events.note(variant.lock_note)
        if variant.lock is None:  # a lock written later changes the answer
            trace.not_there(Path(variant.lock_path))
    if request.remember:
        remember(request, resolution, trace)
    engine = engine_factory()
    built = build(
        resolution, request.settings, events, engine_factory=engine_factory, environ=environ
    )
    run = BuildRun(built=built)
    if built.interrupted:
        run.error = Interrupted(
            "interrupted: running builds were stopped and cleaned up",
            hint="run the same command again; finished images are kept and skipped",
        )
        return run
    if request.test:
        run.tested = smoke_test_built(engine, built, request.gpu, events, resolution.selected)
    ok = not built.failed and run.tested.passed
    selected = [
        (o.variant, o.image_id or "") for o in built.outcomes if o.variant in resolution.selected
    ]
    if request.sif and ok:
        run.sifs = grid_outputs(
            engine,
            selected,
            events,
            sif_dir=request.sif_dir,
            allow_untested=not request.test,
            sandboxes=True,
        )
        if request.test:
            run.sif_tested = smoke_test_sifs(
                [m.path for _, m in run.sifs],
                request.gpu,
                events,
                variants=[v for v, _ in run.sifs],
            )
            ok = run.sif_tested.passed
    problem: HepmlError | None = None
    cache_problem: HepmlError | None = None
    if request.push_cache and ok:
        fresh = [(o.variant, o.image_id or "") for o in built.outcomes if o.state is State.BUILT]
        if fresh:
            run.cached, cache_problem = publish_images(
                engine,
                fresh,
                events,
                registry=request.push_cache,
                dry_run=False,
                force=False,
                content_only=True,
            )
        else:
            events.note(f"nothing built here: nothing to push to {request.push_cache}")
    if request.push and ok:
        run.published, problem = publish_images(
            engine, selected, events, registry=request.registry, dry_run=False, force=request.force
        )
        if run.sifs and problem is None:
            run.sifs_published, problem = publish_sifs(
                run.sifs, events, registry=request.registry, force=request.force
            )
    run.error = _build_error(run, request) or problem or cache_problem
    return run


def remember(request: BuildRequest, resolution: Resolution, trace: spec_load.Trace) -> None:
    """Record what ``build`` resolved, and from what, for the next no-op (``noop``)."""
    noop.remember(
        request.specs,
        request.variant,
        files=trace.files,
        dirs=trace.dirs,
        absent=trace.absent,
        images=[
            {
                "key": v.key,
                "spec": v.spec,
                "slug": v.slug,
                "ref": v.content_ref,
                "tag": v.image,
                "digest": v.digest,
            }
            for v in closure(resolution.selected)  # the order ``Builder`` reports them in
        ],
    )


def _build_error(run: BuildRun, request: BuildRequest) -> HepmlError | None:
    failed = run.built.failed
    nothing = "; nothing was published" if request.push else ""
    if failed:
        names = ", ".join(f"{o.variant.key} ({o.state.value})" for o in failed)
        return BuildFailed(
            f"{len(failed)} of {len(run.built.outcomes)} images not built: {names}{nothing}",
            hint="see the log tails above; fix the spec or the cause and run again",
        )
    if not run.tested.passed or not run.sif_tested.passed:
        return TestsFailed(f"smoke tests failed (see the table above){nothing}")
    return None


def ci_spec_refs(resolution: Resolution, cwd: Path) -> dict[str, str]:
    """What each CI job passes to ``build`` for a spec that is not shipped: its file's path.

    Relative to ``cwd`` (the repository the pipeline runs in) when it is below it.
    """
    shipped = shipped_dir().resolve()
    refs = {}
    for variant in resolution.variants:
        path = Path(variant.source).resolve()
        if path.parent == shipped:
            continue
        try:
            refs[variant.spec] = path.relative_to(cwd.resolve()).as_posix()
        except ValueError:
            refs[variant.spec] = path.as_posix()
    return refs


@contextlib.contextmanager
def interrupted_guard(message: str, hint: str | None = None) -> Iterator[None]:
    """Turn Ctrl-C / SIGTERM inside the block into ``Interrupted`` with this message."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(message, hint=hint) from None


# --- verify ---------------------------------------------------------------------------------


def verify_image(  # noqa: PLR0913 - keyword-only settings
    reference: str,
    events: Events,
    *,
    search: Sequence[Path] = (),
    builder: str = "auto",
    ca_bundle: Path | None = None,
    log_dir: Path,
    keep: bool = False,
    engine_factory: Callable[[], Engine] = connect,
    environ: Mapping[str, str] = os.environ,
) -> verifying.Verdict:
    """``verify``: the image (pulled first when it is only in a registry), rebuilt and compared."""
    from hepml_images.registry import credentials, registry_of  # noqa: PLC0415

    engine = engine_factory()
    image = engine.image(reference)
    if image is None:
        if "/" not in reference or ":" not in reference.rsplit("/", 1)[-1] + "@:":
            raise UsageError(
                f"no image {reference} in the engine",
                hint="name a local image, or REGISTRY/REPOSITORY:TAG to verify a published one",
            )
        found = credentials(registry_of(reference))
        auth = None if found is None else found.auth_config(registry_of(reference))
        events.note(f"pulling {reference} …")
        try:
            pulled = engine.pull(reference, auth)
        except EngineError as exc:
            raise UsageError(f"cannot pull {reference}: {exc.message}") from None
        image = engine.image(pulled)
        if image is None:
            raise UsageError(f"the pull of {reference} left no image")
    variant = variant_from_labels(image.labels, reference, search=search)
    built_by = image.labels.get(provenance.BUILDER_LABEL)
    backend = choose_backend(engine, verifying.rebuild_builder(builder, image.labels), environ)
    if built_by and built_by != backend.name:
        events.note(
            f"{reference} was built by the {built_by} backend, the rebuild uses {backend.name}:"
            " their images differ in history, so expect a difference there"
        )
    bundle = read_bundle(ca_bundle) if ca_bundle is not None else None
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"verify-{variant.spec}-{variant.slug}.log"
    events.note(f"rebuilding {variant.key} without cache ({backend.label}); log: {log_path}")
    with contextlib.ExitStack() as stack:
        ca_url = None
        if bundle is not None:
            ca_url = stack.enter_context(CaServer(bundle, bridge_gateway(engine))).url
        log = stack.enter_context(log_path.open("w", encoding="utf-8", buffering=1))
        return verifying.verify(
            engine,
            image,
            variant,
            reference=reference,
            log=log,
            progress=lambda step: print(f"# {step}", file=log),
            backend=backend,
            ca_url=ca_url,
            keep=keep,
        )
