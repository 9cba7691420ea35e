"""The ``hepml-images`` command line: parse, call the pipeline, print, exit.

The only module that prints (through ``display``), reads the clock for log directories, sets
signal handlers or exits, with ``noop``: the console entry point asks it first, and it answers a
``build`` with nothing to do before this module (typer, rich, the SDK) is even imported. Every
decision (what is built, tested, converted, pushed, refused) is made in ``pipeline`` and the
stage modules; a command here turns options into a call and the result into output and an exit
code: 0 success, 1 a failure or refusal, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from hepml_images import __version__, display, grid, imageinfo, outputs, pipeline
from hepml_images.build.ca import CA_ENV
from hepml_images.doctor import CHECK_NAMES, evaluate, gather, required_checks
from hepml_images.engine import connect
from hepml_images.engine.buildkit import BUILDER_ENV
from hepml_images.errors import HepmlError, NotReproduced, TestsFailed, UsageError
from hepml_images.registry import PULL_FROM_ENV, PUSH_CACHE_ENV, REGISTRY_ENV
from hepml_images.sif import make as make_sif
from hepml_images.smoke import session
from hepml_images.smoke.runner import GpuMode
from hepml_images.spec.load import shipped_dir
from hepml_images.spec.schema import SPEC_SCHEMA
from hepml_images.state import logs_dir

app = typer.Typer(
    name="hepml-images",
    help="Reproducible container images for HEP machine learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
#: Tables in CI logs (not a terminal) get room instead of rich's 80-column default.
_LOG_WIDTH = 160


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(
        stderr=stderr,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
        width=None if stream.isatty() else _LOG_WIDTH,
    )


out = _console(stderr=False)
err = _console(stderr=True)
#: set by SIGTERM: long steps check it too, in case the KeyboardInterrupt was swallowed (an
#: exception raised while Python runs a finalizer, say, is only printed)
_TERMINATED = threading.Event()
events = display.Display(err, _TERMINATED)


def _on_sigterm(signum: int, frame: object) -> None:
    del signum, frame
    _TERMINATED.set()
    raise KeyboardInterrupt


def _stoppable() -> None:
    """SIGINT and SIGTERM stop the command: running steps are cleaned up, exit 130.

    SIGINT too, because a process started in the background by a non-interactive shell begins
    with SIGINT ignored, and then a `kill -INT` would leave a build running to its end.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _print_json(data: object) -> None:
    out.print_json(json.dumps(data))


class OutputFormat(str, Enum):
    """Which build files `render` writes."""

    docker = "docker"
    singularity = "singularity"
    all = "all"


class SifBuilder(str, Enum):
    """What makes the SIF file."""

    auto = "auto"
    native = "native"
    apptainer = "apptainer"


class ImageBuilder(str, Enum):
    """What builds the Dockerfiles."""

    auto = "auto"
    buildkit = "buildkit"
    classic = "classic"


class SifCompression(str, Enum):
    """The SIF's squashfs compressor."""

    gzip = "gzip"
    zstd = "zstd"


class CiProvider(str, Enum):
    """Which CI system `ci generate` writes for."""

    gitlab = "gitlab"
    github = "github"


class CiDocker(str, Enum):
    """Where the jobs' Docker Engine is."""

    dind = "dind"
    socket = "socket"


SpecArgs = Annotated[
    list[str],
    typer.Argument(help="Spec files (path.yaml) or names of shipped specs.", show_default=False),
]
VariantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--variant", "-V", help="Select variants by matrix value: KEY=VALUE (repeatable)."
    ),
]
GpuOpt = Annotated[
    GpuMode,
    typer.Option(
        "--gpu",
        help="GPU checks: auto (run them where a GPU and the NVIDIA runtime are there, else skip"
        " and say so), require (missing GPU is a failure), skip.",
    ),
]
JunitOpt = Annotated[
    Path | None, typer.Option("--junit", help="Write the results as JUnit XML to this file.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        envvar=REGISTRY_ENV,
        help="Push to HOST[/NAMESPACE]/<spec> instead of the specs' publish.repositories.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Overwrite immutable tags that point at another image.")
]
SifOpt = Annotated[
    bool,
    typer.Option(
        "--sif",
        help="Also make SIF files (and the sandboxes that specs ask for with singularity.sandbox)"
        " and, when pushing, publish the SIFs as ORAS artifacts.",
    ),
]
SifDirOpt = Annotated[
    Path | None,
    typer.Option("--sif-dir", help="Where SIF files go (default: here); existing ones are reused."),
]
AllowUntestedOpt = Annotated[
    bool,
    typer.Option("--allow-untested", help="Convert an image without a passing smoke-test result."),
]
SpecsDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--specs",
        help="Also look for the specs that built an image or SIF in this directory (repeatable).",
    ),
]


def _listed(help_text: str) -> Any:  # noqa: ANN401 - typer's ArgumentInfo
    """A list of SPEC/IMAGE arguments, empty by default (the command says what empty means)."""
    return typer.Argument(help=help_text, show_default=False)


def _version(value: bool) -> None:
    if value:
        out.print(f"hepml-images {__version__}", markup=False)
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Reproducible container images for HEP machine learning."""
    del version


def _junit(path: Path | None, tested: pipeline.Tested) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(session.junit_xml(tested.reports))
        err.print(f"JUnit XML written to {path}", markup=False)


# --- specs: list, validate, render, schema ---------------------------------------------------


@app.command("list")
def list_specs(
    specs: Annotated[
        Path | None,
        typer.Option("--specs", help="Directory of spec files (default: the shipped specs)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every spec and its expanded variants."""
    resolution = pipeline.resolve_directory(specs or shipped_dir())
    if as_json:
        _print_json([display.variant_json(v) for v in resolution.variants])
        return
    out.print(display.variants_table(resolution.variants, len(resolution.requested)))


@app.command()
def validate(specs: SpecArgs) -> None:
    """Check specs (and the specs they extend); exit 2 with every problem if one is invalid."""
    resolution = pipeline.resolve_specs(specs)
    names = ", ".join(resolution.requested)
    out.print(f"valid: {names} ({len(resolution.selected)} variants)", markup=False)


@app.command()
def render(
    spec: Annotated[
        str, typer.Argument(help="Spec file or shipped spec name.", show_default=False)
    ],
    variant: VariantOpt = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Which files to write.")
    ] = OutputFormat.all,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write into (one subfolder per variant when there are several).",
        ),
    ] = None,
) -> None:
    """Render Dockerfile and Singularity.def (and build-context files) for a spec's variants."""
    directory = None if output is None else outputs.output_path(output)
    resolution = pipeline.resolve_specs([spec], variant or [])
    rendered = pipeline.render_variants(resolution.selected)
    if directory is None:
        if fmt is OutputFormat.all:
            raise UsageError(
                "--format all writes several files: give -o DIR",
                hint="or choose --format docker|singularity to print one file",
            )
        if len(rendered) != 1:
            slugs = ", ".join(v.slug for v, _ in rendered)
            raise UsageError(
                f"{len(rendered)} variants ({slugs}): choose one with --variant KEY=VALUE"
                " or write them all with -o DIR"
            )
        files = rendered[0][1]
        sys.stdout.write(files.dockerfile if fmt is OutputFormat.docker else files.singularity)
        return
    pipeline.write_rendered(rendered, directory, fmt.value, events)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec language (for editors)."""
    sys.stdout.write(json.dumps(SPEC_SCHEMA, indent=2, sort_keys=True) + "\n")


@app.command()
def doctor(
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            "-r",
            metavar="NAME",
            help=f"Also fail when this check is not ok (repeatable): {', '.join(CHECK_NAMES)}.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Report what this machine has: Docker Engine, NVIDIA runtime and GPUs, tools, credentials.

    Exit 1 when the engine is unreachable or a --require'd check is not ok.
    """
    report = evaluate(gather(), required_checks(require or []))
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        display.show_doctor(out, report)
        if report.failed:
            names = ", ".join(c.name for c in report.failed)
            err.print(f"error: required check(s) not ok: {names}", markup=False)
    if not report.ok:
        raise typer.Exit(report.exit_code)


# --- build, test, publish --------------------------------------------------------------------


@app.command()
def build(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        _listed("Specs to build (default: the default environment, debian-tensorflow cpu)."),
    ] = None,
    variant: VariantOpt = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Images built at the same time.")
    ] = 2,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Rebuild even what is up to date.")
    ] = False,
    builder: Annotated[
        ImageBuilder,
        typer.Option(
            "--builder",
            envvar=BUILDER_ENV,
            help="What builds the Dockerfiles: BuildKit (docker buildx, the engine's docker"
            " driver), the Engine API's classic builder (deprecated by Docker), or auto:"
            " BuildKit where buildx >= 0.13 and Docker Engine >= 23 are there.",
        ),
    ] = ImageBuilder.auto,
    no_test: Annotated[
        bool, typer.Option("--no-test", help="Do not smoke-test the built images.")
    ] = False,
    gpu: GpuOpt = GpuMode.auto,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            envvar=CA_ENV,
            help="Extra CA bundle (PEM) trusted by pip and package managers during the build"
            " only; for TLS-intercepting proxies.",
        ),
    ] = None,
    log_dir: Annotated[Path | None, typer.Option("--log-dir", help="Where build logs go.")] = None,
    junit: JunitOpt = None,
    push: Annotated[
        bool,
        typer.Option("--push", help="Publish the built and tested images (see `publish`)."),
    ] = False,
    registry: RegistryOpt = None,
    force: ForceOpt = False,
    sif: SifOpt = False,
    sif_dir: SifDirOpt = None,
    pull_from: Annotated[
        str | None,
        typer.Option(
            "--pull-from",
            envvar=PULL_FROM_ENV,
            help="Before building an image, pull REGISTRY[/NAMESPACE]/<spec>:<content tag> if the"
            " registry has it (and it carries the same content digest and passed its smoke"
            " tests); build only what is not there. What --push-cache pushes.",
        ),
    ] = None,
    push_cache: Annotated[
        str | None,
        typer.Option(
            "--push-cache",
            envvar=PUSH_CACHE_ENV,
            help="After the tests pass, push every image built here to"
            " REGISTRY[/NAMESPACE]/<spec> under its content tag only (on any branch: a cache"
            " for --pull-from, not a publication).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build images in dependency order (skipping what is up to date), then smoke-test them."""
    request = pipeline.BuildRequest(
        specs=tuple(specs or ()),
        variant=tuple(variant or ()),
        settings=pipeline.BuildSettings(
            jobs=jobs,
            no_cache=no_cache,
            ca_bundle=ca_bundle,
            log_dir=log_dir or (logs_dir() / time.strftime("%Y%m%d-%H%M%S")),
            pull_from=pull_from or None,
            builder=builder.value,
        ),
        test=not no_test,
        gpu=gpu,
        sif=sif,
        sif_dir=sif_dir,
        push=push,
        registry=registry,
        force=force,
        push_cache=push_cache or None,
        remember=True,
    )
    _stoppable()
    run = pipeline.run_build(request, events)
    if not no_test:
        _junit(junit, run.tested)
    if as_json:
        _print_json(display.build_json(run, test=not no_test))
    if run.error is not None:
        raise run.error


@app.command("lock")
def lock_command(
    specs: Annotated[
        list[str] | None, _listed("Specs to lock (default: every shipped spec).")
    ] = None,
    variant: VariantOpt = None,
    upgrade: Annotated[
        bool,
        typer.Option("--upgrade", help="Resolve again even where the lock is up to date."),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Report what moved upstream (exit 1 if anything did); write nothing."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write each variant's lock file (PEP 751 pylock.toml with OS packages and base image)."""
    from hepml_images import locking  # noqa: PLC0415 - only this command needs it

    resolution = (
        pipeline.resolve_specs(specs, variant or [], check_locks=False)
        if specs
        else pipeline.resolve_directory(shipped_dir(), check_locks=False, selection=variant or [])
    )
    results = locking.lock_variants(
        resolution.variants,
        resolution.selected,
        upgrade=upgrade,
        check=check,
        note=lambda m: err.print(m, markup=False),
    )
    if as_json:
        _print_json([r.__dict__ for r in results])
    else:
        for r in results:
            out.print(f"{r.key}: {r.state} ({r.path})", markup=False)
            for line in (*r.changes, *(f"note: {n}" for n in r.notes)):
                out.print(f"  {line}", markup=False)
    if any(r.failed for r in results) or (check and any(r.state == "moved" for r in results)):
        raise typer.Exit(1)


@app.command("test")
def smoke_test(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    targets: Annotated[
        list[str] | None,
        _listed(
            "Specs (their built images), image references or SIF files (FILE.sif);"
            " default: the default environment."
        ),
    ] = None,
    variant: VariantOpt = None,
    gpu: GpuOpt = GpuMode.auto,
    junit: JunitOpt = None,
    search: SpecsDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Smoke-test built images (or SIF files): component checks, smoke commands, GPU checks."""
    _stoppable()
    with pipeline.interrupted_guard("interrupted: test containers were removed"):
        images, sifs, paths = pipeline.smoke_test_arguments(
            targets or [], variant, gpu, events, search=tuple(search or ())
        )
    _junit(junit, pipeline.Tested(reports=images.reports + sifs.reports))
    if as_json:
        tests = display.tested_json(images) + display.sif_tested_json(sifs, paths)
        _print_json({"tests": tests})
    if not (images.passed and sifs.passed):
        raise TestsFailed("smoke tests failed (see the table above)")


@app.command("publish")
def publish_command(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        _listed("Specs whose built images to push (default: the default environment)."),
    ] = None,
    variant: VariantOpt = None,
    registry: RegistryOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be pushed; push nothing.")
    ] = False,
    force: ForceOpt = False,
    sif: SifOpt = False,
    sif_dir: SifDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push built, smoke-tested images under their tags (content digest, versions, moving)."""
    engine = connect()
    pairs = pipeline.built_images(engine, specs, variant)
    _stoppable()
    with pipeline.interrupted_guard(
        "interrupted: some tags may be missing",
        hint="run the same command again: it pushes only what is missing",
    ):
        rows, sif_rows, problem = pipeline.publish_all(
            engine,
            pairs,
            events,
            registry=registry,
            dry_run=dry_run,
            force=force,
            sif=sif,
            sif_dir=sif_dir,
        )
    if as_json:
        _print_json(
            {"publish": display.published_json(rows), "sif": display.sifs_published_json(sif_rows)}
        )
    if problem is not None:
        raise problem


@app.command("inspect")
def inspect_command(
    image: Annotated[
        str,
        typer.Argument(
            help="Image reference: local, or REGISTRY/REPO:TAG; or a SIF file (FILE.sif); or a"
            " spec file (its built image).",
            show_default=False,
        ),
    ],
    remote: Annotated[
        bool, typer.Option("--remote", help="Read it from its registry even if it is local.")
    ] = False,
    variant: VariantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an image's (or a SIF file's) provenance: labels, digests, smoke-test result."""
    info = None
    if image.endswith(".sif") and Path(image).is_file():
        info = imageinfo.sif_file(Path(image))
    elif image.endswith((".yaml", ".yml")) and Path(image).is_file() and not remote:
        engine = connect()
        pairs = pipeline.targets(engine, [image], variant)
        if len(pairs) != 1:
            raise UsageError(f"{image} selects {len(pairs)} images; choose one with -V KEY=VALUE")
        info = imageinfo.local(engine, pairs[0][0].content_ref)
    elif not remote:
        info = imageinfo.local(connect(), image)
    if info is None:
        info = imageinfo.remote(image, events.note)
    data = info.to_json()
    result = session.load_result(info.image_id) if info.image_id else None
    data["smoke_test"] = (
        None
        if result is None
        else {"passed": result.get("passed"), "finished": result.get("finished")}
    )
    if as_json:
        _print_json(data)
        return
    out.print(display.image_table(f"{image} ({info.where})", data))


@app.command("verify")
def verify_command(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    image: Annotated[
        str,
        typer.Argument(
            help="A local image (reference or ID) or REGISTRY/REPOSITORY:TAG (pulled first).",
            show_default=False,
        ),
    ],
    specs: Annotated[
        list[Path] | None,
        typer.Option("--specs", help="Directories with the image's spec (besides the shipped)."),
    ] = None,
    builder: Annotated[
        ImageBuilder,
        typer.Option(
            "--builder",
            envvar=BUILDER_ENV,
            help="The backend of the rebuild; auto: the one that built the image"
            " (its io.hepml.builder label), else as for build.",
        ),
    ] = ImageBuilder.auto,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", envvar=CA_ENV, help="As for build: trusted by the rebuild."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the rebuilt image (hepml-verify/<spec>:…).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild an image from what it carries, without cache, and compare: exit 0 identical, 1 not.

    The spec is found by the image's labels (shipped specs and --specs), its parent by the image
    ID it names, the epoch by its created label; differences are listed per layer and file.
    """
    _stoppable()
    verdict = pipeline.verify_image(
        image,
        events,
        search=tuple(specs or ()),
        builder=builder.value,
        ca_bundle=ca_bundle,
        log_dir=logs_dir() / time.strftime("%Y%m%d-%H%M%S"),
        keep=keep,
    )
    if as_json:
        _print_json(display.verdict_json(verdict))
    else:
        for line in display.verdict_lines(verdict):
            out.print(line)
    if not verdict.identical:
        raise NotReproduced(
            f"the rebuild of {image} differs from it ({display.verdict_summary(verdict)})",
            hint="the paths above say what differs; see docs/reproducibility.md",
        )


# --- grid artifacts: sif, sandbox, ducc-wishlist ---------------------------------------------


@app.command("sif")
def sif_command(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    targets: Annotated[
        list[str] | None,
        _listed(
            "Specs (their built images) or image references; default: the default environment."
        ),
    ] = None,
    variant: VariantOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The SIF file (one image) or the directory for them; default:"
            " <spec>-<variant>.sif here.",
        ),
    ] = None,
    builder: Annotated[
        SifBuilder,
        typer.Option(
            "--builder",
            help="auto: Apptainer when installed, else native (mksquashfs + our SIF writer).",
        ),
    ] = SifBuilder.auto,
    compression: Annotated[
        SifCompression,
        typer.Option(
            "--compression",
            help="The squashfs compressor: gzip runs on every Apptainer and SingularityCE; zstd"
            " makes smaller SIFs that need Apptainer >= 1.4 to run (native builder).",
        ),
    ] = SifCompression.gzip,
    allow_untested: AllowUntestedOpt = False,
    test: Annotated[
        bool, typer.Option("--test/--no-test", help="Smoke-test the SIF file's content.")
    ] = True,
    gpu: GpuOpt = GpuMode.auto,
    search: SpecsDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make SIF files (Apptainer/Singularity) from built, smoke-tested images."""
    engine = connect()
    found = tuple(search or ())
    pairs = pipeline.targets(engine, targets or [], variant, search=found)
    _stoppable()
    with pipeline.interrupted_guard("interrupted: partial files were removed"):
        made = pipeline.make_sifs(
            engine,
            pairs,
            events,
            output=output,
            builder=builder.value,
            allow_untested=allow_untested,
            compression=compression.value,
        )
    report: dict[str, Any] = {"sif": [make_sif.summary(m) for _, m in made]}
    passed = True
    if test:
        paths = [m.path for _, m in made]
        tested = pipeline.smoke_test_sifs(
            paths, gpu, events, search=found, variants=[v for v, _ in made]
        )
        report["tests"] = display.sif_tested_json(tested, paths)
        passed = tested.passed
    if as_json:
        _print_json(report)
    if not passed:
        raise TestsFailed("the SIF's smoke tests failed (see the table above)")


@app.command("sandbox")
def sandbox_command(
    target: Annotated[str, typer.Argument(help="A spec (its built image) or an image reference.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The new directory (must not exist or be empty).")
    ],
    variant: VariantOpt = None,
    allow_untested: AllowUntestedOpt = False,
    search: SpecsDirOpt = None,
) -> None:
    """Unpack a tested image as a flat root filesystem with /.singularity.d (CVMFS, grid sites)."""
    engine = connect()
    pairs = pipeline.targets(engine, [target], variant, search=tuple(search or ()))
    if len(pairs) != 1:
        raise UsageError(f"{target} selects {len(pairs)} images; choose one with -V KEY=VALUE")
    _stoppable()
    with pipeline.interrupted_guard("interrupted: the partial directory was removed"):
        pipeline.make_sandbox(engine, pairs[0], output, events, allow_untested=allow_untested)


@app.command("ducc-wishlist")
def ducc_wishlist(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        _listed("Specs whose published images to list (default: the default environment)."),
    ] = None,
    variant: VariantOpt = None,
    registry: RegistryOpt = None,
    user: Annotated[
        str,
        typer.Option(
            "--user", help="The account DUCC pushes thin images with (the wishlist's user)."
        ),
    ] = "hepml",
    cvmfs_repo: Annotated[
        str, typer.Option("--cvmfs-repo", help="The CVMFS repository DUCC unpacks into.")
    ] = grid.DUCC_REPO,
    output_format: Annotated[
        str, typer.Option("--output-format", help="How DUCC names the thin images.")
    ] = grid.DUCC_OUTPUT_FORMAT,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """A DUCC wishlist for the published images, pinned by manifest digest (CVMFS unpacking)."""
    names, chosen = pipeline.selection(specs, variant)
    resolution = pipeline.resolve_specs(names, chosen)
    entries = grid.published(resolution.selected, registry, imageinfo.remote_digest)
    text = grid.wishlist(entries, user=user, cvmfs_repo=cvmfs_repo, output_format=output_format)
    if output is None:
        out.print(text, end="", markup=False)
        return
    written = outputs.write_file(outputs.output_path(output), text.encode())
    err.print(f"wrote {written}: {len(entries)} images for {cvmfs_repo}", markup=False)


# --- hepml-images ci generate ----------------------------------------------------------------
ci_app = typer.Typer(
    help="CI pipelines that build, test and publish the images.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ci_app, name="ci")


@ci_app.command("generate")
def ci_generate(
    provider: Annotated[
        CiProvider, typer.Option("--provider", "-p", help="gitlab (.gitlab-ci.yml) or github.")
    ],
    specs: Annotated[
        list[str] | None,
        _listed("Specs to build (with their parents); default: every shipped spec."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write the pipeline to this file (default: stdout)."),
    ] = None,
    docker: Annotated[
        CiDocker | None,
        typer.Option(
            "--docker",
            help="The jobs' Docker Engine: dind (GitLab's docker:dind service, its default) or"
            " socket (the runner's own engine, no services; GitHub's only choice).",
        ),
    ] = None,
    gpu_tag: Annotated[
        str | None,
        typer.Option(
            "--gpu-tag",
            help="Run variants with GPU checks on runners with this tag (GitLab tags:, GitHub"
            " runs-on) with --gpu require; the others anywhere with --gpu auto.",
        ),
    ] = None,
) -> None:
    """Write a CI pipeline: a job per variant, parents first; publish on default branch, tags."""
    from hepml_images import ci  # noqa: PLC0415 - only this command needs it

    resolution = (
        pipeline.resolve_specs(specs) if specs else pipeline.resolve_directory(shipped_dir())
    )
    text = ci.generate(
        resolution.variants,
        provider.value,
        spec_refs=pipeline.ci_spec_refs(resolution, Path.cwd()),
        arguments=list(specs or []),
        docker=None if docker is None else docker.value,
        gpu_tag=gpu_tag,
    )
    if output is None:
        sys.stdout.write(text)
        return
    written = outputs.write_file(outputs.output_path(output), text.encode())
    err.print(
        f"wrote {written}: {provider.value} pipeline for {len(ci.in_order(resolution.variants))}"
        " variants",
        markup=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    try:
        app(args=argv, prog_name="hepml-images")
    except SystemExit as exc:  # typer's own handling: --help, usage errors (2), Ctrl-C (1)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except HepmlError as exc:
        err.print(f"error: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", markup=False)
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None:  # not about a path the user named: ours to explain
            return _internal(exc)
        err.print(f"error: {exc.filename}: {exc.strerror or exc}", markup=False)
        err.print("  hint: check that path and its permissions", markup=False)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say it is our bug
        return _internal(exc)
    return 0


def _internal(exc: Exception) -> int:
    """An error we did not expect: say it is a bug, and how to see the traceback."""
    err.print(f"internal error: {type(exc).__name__}: {exc}", markup=False)
    err.print("this is a bug in hepml-images; set HEPML_DEBUG=1 for the traceback", markup=False)
    if os.environ.get("HEPML_DEBUG"):
        traceback.print_exc()
    return 1


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
