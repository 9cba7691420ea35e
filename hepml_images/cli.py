"""The ``hepml-images`` command line: the only module that prints, reads the clock or exits.

Exit codes: 0 success, 2 bad input (spec or arguments), 1 unexpected internal error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from hepml_images import __version__, grid, provenance
from hepml_images import inspect as image_inspect
from hepml_images.build.ca import CA_ENV, CaServer, bridge_gateway, read_bundle
from hepml_images.build.graph import Builder, Outcome, State, up_to_date
from hepml_images.build.graph import Options as BuildOptions
from hepml_images.build.images import iso_time
from hepml_images.display import BuildProgress, summary_table
from hepml_images.doctor import CHECK_NAMES, Status, evaluate, gather, required_checks
from hepml_images.engine import connect
from hepml_images.errors import (
    BuildFailed,
    HepmlError,
    Interrupted,
    TestsFailed,
    UsageError,
)
from hepml_images.pipeline import (
    DEFAULT_EPOCH,
    DEFAULT_SELECTION,
    DEFAULT_SPECS,
    FILENAMES,
    render_variants,
    resolve_directory,
    resolve_specs,
    variant_from_labels,
    write_build_dir,
)
from hepml_images.publish import REGISTRY_ENV
from hepml_images.publish import publish as publish_images
from hepml_images.sif import check as sif_check
from hepml_images.sif import make as make_sif
from hepml_images.sif.make import Made, find_apptainer
from hepml_images.smoke import session
from hepml_images.smoke.runner import GpuHost, GpuMode, probe_gpu_host
from hepml_images.smoke.runner import Status as CheckStatus
from hepml_images.spec.load import shipped_dir
from hepml_images.spec.model import Bootstrap
from hepml_images.spec.schema import SPEC_SCHEMA
from hepml_images.state import logs_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from docker import DockerClient
    from typing_extensions import Self

    from hepml_images.resolve import ResolvedVariant

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
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else _LOG_WIDTH)
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else _LOG_WIDTH
)


class OutputFormat(str, Enum):
    """Which build files `render` writes."""

    docker = "docker"
    singularity = "singularity"
    all = "all"


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


def _version(value: bool) -> None:
    if value:
        out.print(f"hepml-images {__version__}")
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


def _parent(variant: ResolvedVariant) -> str:
    if variant.parent is not None:
        return f"{variant.parent.spec}:{variant.parent.slug}"
    base = variant.content.base
    if base is None:
        return "?"
    if isinstance(base, Bootstrap):
        return f"bootstrap {base.suite}"
    return base.image


_KEY_VERSIONS = ("python", "hdf5", "tensorflow", "accelerator", "cuda", "cudnn", "analysisbase")


def _variant_json(variant: ResolvedVariant) -> dict[str, Any]:
    return {
        "spec": variant.spec,
        "variant": variant.slug,
        "matrix": dict(variant.matrix),
        "source": variant.source,
        "image": variant.image,
        "tags": list(variant.tags),
        "parent": f"{variant.parent.spec}:{variant.parent.slug}" if variant.parent else None,
        "base": None if variant.parent else _parent(variant),
        "versions": dict(variant.versions),
        "digest": variant.digest,
    }


@app.command("list")
def list_specs(
    specs: Annotated[
        Path | None,
        typer.Option("--specs", help="Directory of spec files (default: the shipped specs)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every spec and its expanded variants."""
    resolution = resolve_directory(specs or shipped_dir())
    if as_json:
        out.print_json(json.dumps([_variant_json(v) for v in resolution.variants]))
        return
    table = Table(title=f"{len(resolution.requested)} specs, {len(resolution.variants)} variants")
    for column in ("spec", "variant", "tags", "base / parent", "versions", "digest"):
        table.add_column(column, overflow="fold")
    for variant in resolution.variants:
        versions = variant.version_map
        shown = " ".join(f"{k}={versions[k]}" for k in _KEY_VERSIONS if k in versions)
        table.add_row(
            variant.spec,
            variant.slug,
            " ".join(variant.tags),
            _parent(variant),
            shown,
            variant.digest[7:19],
        )
    out.print(table)


@app.command()
def validate(specs: SpecArgs) -> None:
    """Check specs (and the specs they extend); exit 2 with every problem if one is invalid."""
    resolution = resolve_specs(specs)
    names = ", ".join(resolution.requested)
    out.print(f"valid: {names} ({len(resolution.selected)} variants)")


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
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write into (one subfolder per variant when there are several).",
        ),
    ] = None,
) -> None:
    """Render Dockerfile and Singularity.def (and build-context files) for a spec's variants."""
    resolution = resolve_specs([spec], variant or [])
    rendered = render_variants(resolution.selected)
    if output is None:
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
        text = (
            rendered[0][1].dockerfile if fmt is OutputFormat.docker else rendered[0][1].singularity
        )
        sys.stdout.write(text)
        return
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} exists and is not a directory")
    for resolved, files in rendered:
        target = output if len(rendered) == 1 else output / resolved.slug
        written = write_build_dir(files, target, fmt.value)
        names = [p.name for p in written if p.name in FILENAMES.values()]
        err.print(
            f"{resolved.key}: wrote {', '.join(names)} and"
            f" {len(written) - len(names)} context file(s) to {target}"
        )


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec language (for editors)."""
    sys.stdout.write(json.dumps(SPEC_SCHEMA, indent=2, sort_keys=True) + "\n")


_STATUS_STYLE = {Status.ok: "green", Status.warning: "yellow", Status.missing: "red"}


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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Report what this machine has: Docker Engine, NVIDIA runtime and GPUs, tools, credentials.

    Exit 1 when the engine is unreachable or a --require'd check is not ok.
    """
    report = evaluate(gather(), required_checks(require or []))
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        table = Table(title="hepml-images doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            status = Text(check.status.value, style=_STATUS_STYLE[check.status])
            table.add_row(check.name, status, Text(check.detail))
        out.print(table)
        hints = [c for c in report.checks if c.hint]
        if hints:
            out.print("hints:")
        for check in hints:
            out.print(f"  {check.name}: {check.hint}", markup=False)
        if report.failed:
            names = ", ".join(c.name for c in report.failed)
            err.print(f"error: required check(s) not ok: {names}", markup=False)
    if not report.ok:
        raise typer.Exit(report.exit_code)


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

_CHECK_STYLE = {
    CheckStatus.PASSED: "green",
    CheckStatus.FAILED: "bold red",
    CheckStatus.SKIPPED: "yellow",
}


def _gpu_host(client: DockerClient | None) -> Callable[[], GpuHost]:
    """Probe the GPU host once, when the first GPU check asks."""
    host_cache: list[GpuHost] = []

    def host() -> GpuHost:
        if not host_cache:
            host_cache.append(probe_gpu_host(client))  # type: ignore[arg-type]
        return host_cache[0]

    return host


def _run_tests(
    client: DockerClient,
    targets: list[tuple[ResolvedVariant, str]],
    gpu: GpuMode,
    junit: Path | None,
) -> list[dict[str, Any]]:
    """Smoke-test (variant, image ID) pairs; print the table; store and return the results."""
    host = _gpu_host(client)
    reports = []
    for variant, image_id in targets:
        err.print(f"testing {variant.content_ref} ({image_id[7:19]}) …", markup=False)
        report = session.check_image(client, variant, image_id, gpu=gpu, host=host)
        session.save(report)
        reports.append(report)
    _show_tests(reports, junit)
    return [session.to_json(r) for r in reports]


def _show_tests(reports: list[session.ImageReport], junit: Path | None) -> None:
    """The results table, the output of failed checks, and the JUnit file."""
    table = Table(title="smoke tests")
    for column in ("image", "check", "result", "time", "detail"):
        table.add_column(column, overflow="fold")
    for report in reports:
        name = report.artifact or report.variant.key
        for result in report.results:
            table.add_row(
                name,
                result.check.name,
                Text(result.status.value, style=_CHECK_STYLE[result.status]),
                f"{result.seconds:.1f}s",
                result.message,
            )
        if report.gpu_note and report.gpu_note != session.NOT_GPU:
            table.add_row(name, "GPU", "", "", report.gpu_note)
    err.print(table)
    for report in reports:
        for result in report.results:
            if result.status is CheckStatus.FAILED and result.output:
                name = report.artifact or report.variant.key
                err.print(f"\n{name}: {result.check.name} failed:", markup=False)
                for line in result.output.splitlines()[-15:]:
                    err.print(f"  | {line}", markup=False)
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_bytes(session.junit_xml(reports))
        err.print(f"JUnit XML written to {junit}", markup=False)


def _image_variant(client: DockerClient, ref: str) -> tuple[ResolvedVariant, str]:
    """The variant an image was built from, found through its labels."""
    from docker.errors import ImageNotFound  # noqa: PLC0415

    try:
        attrs = client.api.inspect_image(ref)
    except ImageNotFound:
        raise UsageError(f"no image {ref} in the local engine") from None
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return variant_from_labels(labels, ref), str(attrs["Id"])


def _built(
    client: DockerClient, specs: list[str] | None, variant: list[str] | None
) -> list[tuple[ResolvedVariant, str]]:
    """The selected variants and their image IDs; a clear error for any not built yet."""
    names, selection = _selection(specs, variant)
    resolution = resolve_specs(names, selection)
    found: list[tuple[ResolvedVariant, str]] = []
    missing = []
    for resolved in resolution.selected:
        image_id = up_to_date(client, resolved)
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


def _looks_like_image(argument: str) -> bool:
    return ":" in argument or argument.startswith("sha256")


@app.command("test")
def smoke_test(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs (their built images), image references or SIF files (FILE.sif);"
            " default: the default environment.",
            show_default=False,
        ),
    ] = None,
    variant: VariantOpt = None,
    gpu: GpuOpt = GpuMode.auto,
    junit: JunitOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Smoke-test built images (or SIF files): component checks, smoke commands, GPU checks."""
    sifs = [Path(t) for t in targets or [] if t.endswith(".sif")]
    rest = [t for t in targets or [] if not t.endswith(".sif")]
    if sifs and not rest:
        results = _test_sifs(sifs, gpu, junit)
    else:
        client = connect()
        pairs = _targets(client, rest, variant)
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            results = _run_tests(client, pairs, gpu, junit)
            if sifs:
                results += _test_sifs(sifs, gpu, None)
        except KeyboardInterrupt:
            raise Interrupted("interrupted: test containers were removed") from None
    if as_json:
        out.print_json(json.dumps({"tests": results}))
    if any(not r["passed"] for r in results):
        raise TestsFailed("smoke tests failed (see the table above)")


def _targets(
    client: DockerClient, targets: list[str], variant: list[str] | None
) -> list[tuple[ResolvedVariant, str]]:
    """Image references and specs (their built images) as (variant, image ID) pairs."""
    images = [t for t in targets if _looks_like_image(t) and not t.endswith(".yaml")]
    specs = [t for t in targets if t not in images]
    pairs = [_image_variant(client, ref) for ref in images]
    if specs or not images:
        pairs.extend(_built(client, specs, variant))
    return pairs


RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        envvar=REGISTRY_ENV,
        help="Push to HOST[/NAMESPACE]/<spec> instead of the specs' publish.repositories.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be pushed; push nothing.")
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


class PublishFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """Something was refused or failed to push."""


def _publish_and_report(
    client: DockerClient,
    targets: list[tuple[ResolvedVariant, str]],
    *,
    registry: str | None,
    dry_run: bool,
    force: bool,
) -> tuple[list[dict[str, Any]], PublishFailed | None]:
    """Publish, print the table; return the JSON rows and the error to raise, if any."""
    results = publish_images(
        client,
        targets,
        registry=registry,
        dry_run=dry_run,
        force=force,
        note=lambda message: err.print(message, markup=False),
    )
    table = Table(title="publish (dry run)" if dry_run else "publish")
    for column in ("image", "repository", "tag", "result", "detail"):
        table.add_column(column, overflow="fold")
    rows: list[dict[str, Any]] = []
    for result in results:
        key = result.variant.key
        if result.error and not result.tags:
            table.add_row(
                key, result.repository, "", Text("refused", style="bold red"), result.error
            )
        for tag in result.tags:
            style = "bold red" if tag.action in {"refused", "failed"} else "green"
            table.add_row(
                key, result.repository, tag.tag, Text(tag.action, style=style), tag.detail
            )
        if result.error and result.tags:
            table.add_row(
                key, result.repository, "", Text("failed", style="bold red"), result.error
            )
        rows.append(
            {
                "spec": result.variant.spec,
                "variant": result.variant.slug,
                "image_id": result.image_id,
                "published_id": result.published_id,
                "repository": result.repository,
                "manifest": result.manifest,
                "tags": [
                    {"tag": t.tag, "action": t.action, "detail": t.detail} for t in result.tags
                ],
                "error": result.error,
            }
        )
    err.print(table)
    for result in results:
        if result.hint:
            err.print(f"hint: {result.hint}", markup=False)
    problems = [r for r in rows if r["error"] or any(t["action"] == "refused" for t in r["tags"])]
    if not problems:
        return rows, None
    immutable = any(t["action"] == "refused" for r in problems for t in r["tags"])
    return rows, PublishFailed(
        f"{len(problems)} of {len(rows)} publications refused or failed (see the table)",
        hint="--force overwrites an immutable tag; bump the spec version instead if you can"
        if immutable
        else None,
    )


@app.command("publish")
def publish_command(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs whose built images to push (default: the default environment).",
            show_default=False,
        ),
    ] = None,
    variant: VariantOpt = None,
    registry: RegistryOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    sif: SifOpt = False,
    sif_dir: SifDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Push built, smoke-tested images under their tags (content digest, versions, moving)."""
    client = connect()
    targets = _built(client, specs, variant)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sif_rows: list[dict[str, Any]] = []
    try:
        rows, problem = _publish_and_report(
            client, targets, registry=registry, dry_run=dry_run, force=force
        )
        if sif and problem is None and not dry_run:
            made = _grid_outputs(
                client, targets, sif_dir=sif_dir, allow_untested=False, sandboxes=False
            )
            sif_rows, problem = _push_sifs(made, registry, force=force)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted: some tags may be missing",
            hint="run the same command again: it pushes only what is missing",
        ) from None
    if as_json:
        out.print_json(json.dumps({"publish": rows, "sif": sif_rows}))
    if problem is not None:
        raise problem


@app.command("inspect")
def inspect_command(
    image: Annotated[
        str,
        typer.Argument(
            help="Image reference: local, or REGISTRY/REPO:TAG; or a SIF file (FILE.sif).",
            show_default=False,
        ),
    ],
    remote: Annotated[
        bool, typer.Option("--remote", help="Read it from its registry even if it is local.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an image's (or a SIF file's) provenance: labels, digests, smoke-test result."""
    info = None
    if image.endswith(".sif") and Path(image).is_file():
        info = image_inspect.sif_file(Path(image))
    elif not remote:
        info = image_inspect.local(connect(), image)
    if info is None:
        info = image_inspect.remote(image)
    data = info.to_json()
    result = session.load_result(info.image_id) if info.image_id else None
    data["smoke_test"] = (
        None
        if result is None
        else {"passed": result.get("passed"), "finished": result.get("finished")}
    )
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title=f"{image} ({info.where})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("image_id", "digest", "created", "architecture"):
        table.add_row(key, str(data[key] or ""))
    if data["smoke_test"] is not None:
        verdict = "passed" if data["smoke_test"]["passed"] else "FAILED"
        table.add_row("smoke tests", f"{verdict} ({data['smoke_test']['finished']})")
    for key, value in data["labels"].items():
        table.add_row(key, value)
    out.print(table)


# --- grid artifacts: sif, sandbox, ducc-wishlist -------------------------------------------


class SifBuilder(str, Enum):
    """What makes the SIF file."""

    auto = "auto"
    native = "native"
    apptainer = "apptainer"


SifBuilderOpt = Annotated[
    SifBuilder,
    typer.Option(
        "--builder",
        help="auto: Apptainer when installed, else native (mksquashfs + our SIF writer).",
    ),
]
AllowUntestedOpt = Annotated[
    bool,
    typer.Option("--allow-untested", help="Convert an image without a passing smoke-test result."),
]


def _apptainer_for(builder: SifBuilder) -> str | None:
    found = find_apptainer()
    if builder is SifBuilder.apptainer and found is None:
        raise UsageError(
            "--builder apptainer: neither apptainer nor singularity is on PATH",
            hint="install Apptainer, or use --builder native (the default without it)",
        )
    return None if builder is SifBuilder.native else found


class _StepProgress:
    """Progress of the slow steps: a bar on a terminal, a line per quarter in logs."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.marks: dict[str, int] = {}
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        if err.is_terminal:
            self.bar = Progress(console=err, transient=True)
            self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, step: str, done: int, total: int) -> None:
        if _TERMINATED.is_set():
            raise KeyboardInterrupt
        if self.bar is not None:
            if step not in self.tasks:
                self.tasks[step] = self.bar.add_task(f"{self.what}: {step}", total=total or None)
            self.bar.update(self.tasks[step], completed=done, total=total or None)
            return
        percent = 100 * done // total if total else 0
        if self.marks.get(step) != percent // 25:
            self.marks[step] = percent // 25
            err.print(f"  {self.what}: {step} {percent}%", markup=False)


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _make_sifs(  # noqa: PLR0913 - keyword-only settings
    client: DockerClient,
    pairs: list[tuple[ResolvedVariant, str]],
    *,
    output: Path | None,
    builder: SifBuilder,
    allow_untested: bool,
    reuse: bool = False,
) -> list[tuple[ResolvedVariant, Made]]:
    """Make the SIF file of each tested image (``output``: a file for one, else a directory)."""
    apptainer = _apptainer_for(builder)
    single = output is not None and output.suffix == ".sif"
    if single and len(pairs) > 1:
        raise UsageError(f"-o {output} names one file, but {len(pairs)} images are selected")
    made = []
    for variant, image_id in pairs:
        ref, tested_id = grid.tested_image(client, variant, image_id, allow_untested=allow_untested)
        labels = (client.api.inspect_image(tested_id).get("Config") or {}).get("Labels") or {}
        target = output if single and output else (output or Path()) / grid.sif_filename(variant)
        if reuse and target.is_file() and sif_check.sif_labels(target) == labels:
            err.print(f"{variant.key}: {target} is up to date (same tested image)", markup=False)
            made.append((variant, make_sif.existing(target, tested_id, ref)))
            continue
        epoch = grid.epoch_for(labels, os.environ)
        err.print(f"{variant.key}: making {target} from {ref} …", markup=False)
        with _StepProgress(variant.key) as progress:
            result = make_sif.make_sif(
                client,
                tested_id,
                target,
                reference=ref,
                epoch=epoch,
                progress=progress,
                apptainer=apptainer,
            )
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
        err.print(
            f"{variant.key}: wrote {result.path} ({_size(result.size)}, sha256"
            f" {result.sha256[:16]}…; {steps})",
            markup=False,
        )
        made.append((variant, result))
    return made


def _test_sifs(paths: list[Path], gpu: GpuMode, junit: Path | None) -> list[dict[str, Any]]:
    """Smoke-test SIF files: Apptainer when installed, else their root filesystem on the engine."""
    apptainer = find_apptainer()
    client = None if apptainer else connect()
    host = _gpu_host(client)
    reports = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no SIF file {path}")
        labels = sif_check.sif_labels(path)
        found = variant_from_labels(labels, str(path))
        how = "apptainer exec --cleanenv" if apptainer else "its root filesystem on the engine"
        err.print(f"testing {path} ({how}) …", markup=False)
        try:
            reports.append(
                sif_check.check_sif(
                    client,
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
    _show_tests(reports, junit)
    return [sif_check.report_json(r, p) for r, p in zip(reports, paths, strict=True)]


def _push_sifs(
    made: list[tuple[ResolvedVariant, Made]], registry: str | None, *, force: bool
) -> tuple[list[dict[str, Any]], PublishFailed | None]:
    """Push each SIF as an ORAS artifact under ``<tag>-sif`` (see grid.sif_references).

    An immutable tag that holds another SIF is left alone (reported) unless ``force``.
    """
    from hepml_images import oras  # noqa: PLC0415 - requests is loaded only to push SIFs

    table = Table(title="publish SIF (ORAS)")
    for column in ("image", "reference", "result", "digest"):
        table.add_column(column, overflow="fold")
    rows = []
    note = lambda message: err.print(message, markup=False)  # noqa: E731 - one-line callback
    for variant, result in made:
        created = datetime.fromtimestamp(result.epoch, tz=timezone.utc)
        layer = f"sha256:{result.sha256}"
        for reference, immutable in grid.sif_references(variant, registry):
            remote = oras.remote_sif(reference, note=note)
            held = remote[1] if remote else None
            if remote is not None and held == layer:
                action, digest = "up to date", remote[0]
            elif held is not None and immutable and not force:
                action, digest = "refused", f"immutable tag holds {held[:19]}…"
            else:
                pushed = oras.push_sif(
                    result.path, reference, credentials=None, created=created, note=note
                )
                action, digest = "pushed", pushed.manifest_digest
            style = "bold red" if action == "refused" else "green"
            table.add_row(variant.key, f"oras://{reference}", Text(action, style=style), digest)
            rows.append(
                {
                    "spec": variant.spec,
                    "variant": variant.slug,
                    "reference": f"oras://{reference}",
                    "action": action,
                    "manifest": digest,
                    "layer": layer,
                }
            )
    err.print(table)
    refused = [r["reference"] for r in rows if r["action"] == "refused"]
    if not refused:
        return rows, None
    return rows, PublishFailed(
        f"{len(refused)} immutable SIF tags hold another file: {', '.join(refused)}",
        hint="--force overwrites them; bump the spec version instead if you can",
    )


OutputSifOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="The SIF file (one image) or the directory for them; default: <spec>-<variant>.sif"
        " here.",
    ),
]


@app.command("sif")
def sif_command(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs (their built images) or image references; default: the default"
            " environment.",
            show_default=False,
        ),
    ] = None,
    variant: VariantOpt = None,
    output: OutputSifOpt = None,
    builder: SifBuilderOpt = SifBuilder.auto,
    allow_untested: AllowUntestedOpt = False,
    test: Annotated[
        bool, typer.Option("--test/--no-test", help="Smoke-test the SIF file's content.")
    ] = True,
    gpu: GpuOpt = GpuMode.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Make SIF files (Apptainer/Singularity) from built, smoke-tested images."""
    client = connect()
    pairs = _targets(client, targets or [], variant)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        made = _make_sifs(
            client, pairs, output=output, builder=builder, allow_untested=allow_untested
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted: partial files were removed") from None
    report: dict[str, Any] = {"sif": [make_sif.summary(m) for _, m in made]}
    if test:
        report["tests"] = _test_sifs([m.path for _, m in made], gpu, None)
    if as_json:
        out.print_json(json.dumps(report))
    if any(not t["passed"] for t in report.get("tests", [])):
        raise TestsFailed("the SIF's smoke tests failed (see the table above)")


def _make_sandbox(
    client: DockerClient,
    variant: ResolvedVariant,
    image_id: str,
    output: Path,
    *,
    allow_untested: bool,
) -> Made | None:
    """Unpack the tested image into ``output``; None when it already holds that image."""
    ref, tested_id = grid.tested_image(client, variant, image_id, allow_untested=allow_untested)
    labels = (client.api.inspect_image(tested_id).get("Config") or {}).get("Labels") or {}
    held = output / ".singularity.d" / "labels.json"
    if held.is_file() and json.loads(held.read_text(encoding="utf-8")) == labels:
        err.print(
            f"{variant.key}: the sandbox {output} is up to date (same tested image)", markup=False
        )
        return None
    with _StepProgress(variant.key) as progress:
        made = make_sif.make_sandbox(
            client,
            tested_id,
            output,
            epoch=grid.epoch_for(labels, os.environ),
            progress=progress,
        )
    err.print(
        f"{variant.key}: wrote the sandbox {made.path} from {ref} ({_size(made.size)});"
        f" run it with: apptainer exec --cleanenv {made.path} COMMAND",
        markup=False,
    )
    return made


@app.command("sandbox")
def sandbox_command(
    target: Annotated[str, typer.Argument(help="A spec (its built image) or an image reference.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The new directory (must not exist or be empty).")
    ],
    variant: VariantOpt = None,
    allow_untested: AllowUntestedOpt = False,
) -> None:
    """Unpack a tested image as a flat root filesystem with /.singularity.d (CVMFS, grid sites)."""
    client = connect()
    pairs = _targets(client, [target], variant)
    if len(pairs) != 1:
        raise UsageError(f"{target} selects {len(pairs)} images; choose one with -V KEY=VALUE")
    found, image_id = pairs[0]
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _make_sandbox(client, found, image_id, output, allow_untested=allow_untested)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the partial directory was removed") from None


def _grid_outputs(
    client: DockerClient,
    pairs: list[tuple[ResolvedVariant, str]],
    *,
    sif_dir: Path | None,
    allow_untested: bool,
    sandboxes: bool,
) -> list[tuple[ResolvedVariant, Made]]:
    """``--sif`` of build and publish: the SIFs (and sandboxes) the specs' ``singularity`` asks."""
    wanted = [(v, i) for v, i in pairs if v.content.singularity.sif]
    for variant, _ in pairs:
        if not variant.content.singularity.sif:
            err.print(f"{variant.key}: no SIF (singularity.sif is false)", markup=False)
    try:
        made = _make_sifs(
            client,
            wanted,
            output=sif_dir,
            builder=SifBuilder.auto,
            allow_untested=allow_untested,
            reuse=True,
        )
        if sandboxes:
            for variant, image_id in pairs:
                if variant.content.singularity.sandbox:
                    target = (sif_dir or Path()) / grid.sif_filename(variant).removesuffix(".sif")
                    _make_sandbox(client, variant, image_id, target, allow_untested=allow_untested)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: partial SIF files and sandboxes were removed") from None
    return made


def _manifest_digest(reference: str) -> str | None:
    try:
        return image_inspect.remote(reference).digest
    except image_inspect.InspectFailed as exc:
        if "manifest unknown" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


@app.command("ducc-wishlist")
def ducc_wishlist(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs whose published images to list (default: the default environment).",
            show_default=False,
        ),
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
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """A DUCC wishlist for the published images, pinned by manifest digest (CVMFS unpacking)."""
    names, selection = _selection(specs, variant)
    resolution = resolve_specs(names, selection)
    entries = grid.published(resolution.selected, registry, _manifest_digest)
    text = grid.wishlist(entries, user=user, cvmfs_repo=cvmfs_repo, output_format=output_format)
    if output is None:
        out.print(text, end="", markup=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    err.print(f"wrote {output}: {len(entries)} images for {cvmfs_repo}", markup=False)


# --- hepml-images ci generate ---------------------------------------------------------------
ci_app = typer.Typer(
    help="CI pipelines that build, test and publish the images.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ci_app, name="ci")


class CiProvider(str, Enum):
    """Which CI system `ci generate` writes for."""

    gitlab = "gitlab"
    github = "github"


def _ci_spec_ref(source: str) -> str | None:
    """What a CI job passes to `build` for a spec file: None for a shipped spec (its name)."""
    path = Path(source).resolve()
    if path.parent == shipped_dir().resolve():
        return None
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


@ci_app.command("generate")
def ci_generate(
    provider: Annotated[
        CiProvider, typer.Option("--provider", "-p", help="gitlab (.gitlab-ci.yml) or github.")
    ],
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs to build (with their parents); default: every shipped spec.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the pipeline to this file (default: stdout)."),
    ] = None,
) -> None:
    """Write a CI pipeline: a job per variant, parents first; publish on default branch, tags."""
    from hepml_images import ci  # noqa: PLC0415 - only this command needs it

    resolution = resolve_specs(specs) if specs else resolve_directory(shipped_dir())
    refs = {v.spec: ref for v in resolution.variants if (ref := _ci_spec_ref(v.source)) is not None}
    text = ci.generate(
        resolution.variants, provider.value, spec_refs=refs, arguments=list(specs or [])
    )
    if output is None:
        sys.stdout.write(text)
        return
    if output.is_dir():
        raise UsageError(f"{output} is a directory", hint="give -o a file name")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    err.print(
        f"wrote {output}: {provider.value} pipeline for {len(ci.in_order(resolution.variants))}"
        " variants",
        markup=False,
    )


#: set by SIGTERM: long steps check it too, in case the KeyboardInterrupt was swallowed (an
#: exception raised while Python runs a finalizer, say, is only printed)
_TERMINATED = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    del signum, frame
    _TERMINATED.set()
    raise KeyboardInterrupt


def _origins() -> Callable[[ResolvedVariant], provenance.Origin]:
    """Where each variant's spec comes from (git revision, epoch), looked up once per file."""
    cache: dict[str, provenance.Origin] = {}

    def origin_of(variant: ResolvedVariant) -> provenance.Origin:
        if variant.source not in cache:
            cache[variant.source] = provenance.origin(Path(variant.source))
        return cache[variant.source]

    return origin_of


def _epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return DEFAULT_EPOCH
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds")
    return int(raw)


def _selection(specs: list[str] | None, variant: list[str] | None) -> tuple[list[str], list[str]]:
    if specs:
        return specs, variant or []
    return list(DEFAULT_SPECS), variant or list(DEFAULT_SELECTION)


def _outcome_json(outcome: Outcome, t0: float) -> dict[str, Any]:
    variant = outcome.variant

    def offset(when: float | None) -> float | None:
        return None if when is None else round(when - t0, 2)

    return {
        "spec": variant.spec,
        "variant": variant.slug,
        "image": variant.content_ref,
        "tags": [variant.image],
        "digest": variant.digest,
        "state": outcome.state.value,
        "image_id": outcome.image_id,
        "seconds": None if outcome.seconds is None else round(outcome.seconds, 1),
        "reason": outcome.reason,
        "started": offset(outcome.started),
        "finished": offset(outcome.finished),
        "log": str(outcome.log_path) if outcome.log_path else None,
    }


@app.command()
def build(  # noqa: PLR0913, PLR0917 - one parameter per documented flag
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Specs to build (default: the default environment, debian-tensorflow cpu).",
            show_default=False,
        ),
    ] = None,
    variant: VariantOpt = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Images built at the same time.")
    ] = 2,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Rebuild even what is up to date.")
    ] = False,
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout.")
    ] = False,
) -> None:
    """Build images in dependency order (skipping what is up to date), then smoke-test them."""
    names, selection = _selection(specs, variant)
    resolution = resolve_specs(names, selection)
    epoch = _epoch()
    bundle = read_bundle(ca_bundle) if ca_bundle is not None else None
    client = connect()
    logs = log_dir or (logs_dir() / time.strftime("%Y%m%d-%H%M%S"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    with contextlib.ExitStack() as stack:
        ca_url = None
        if bundle is not None:
            ca_url = stack.enter_context(CaServer(bundle, bridge_gateway(client))).url
        origin_of = _origins()
        options = BuildOptions(
            jobs=jobs,
            no_cache=no_cache,
            epoch=epoch,
            log_dir=logs,
            ca_url=ca_url,
            labels=lambda v, parent_id: provenance.build_labels(
                origin_of(v),
                spec_labels=v.content.labels,
                parent_id=parent_id,
                created=iso_time(origin_of(v).epoch),
            ),
            epoch_of=lambda v: origin_of(v).epoch,
        )
        builder = Builder(connect, resolution.selected, options)
        progress = BuildProgress(err, list(builder.outcomes.values()))
        builder.report = progress.update
        interrupted = False
        try:
            with progress:
                outcomes = builder.run()
        except KeyboardInterrupt:
            interrupted = True
            outcomes = list(builder.outcomes.values())
    err.print(summary_table(outcomes))
    for outcome in outcomes:
        if outcome.state is State.FAILED:
            err.print(f"\n{outcome.variant.key} failed: {outcome.reason}", markup=False)
            if outcome.hint:
                err.print(f"  hint: {outcome.hint}", markup=False)
            if outcome.log_tail:
                err.print("  last lines of the log:", markup=False)
                for line in outcome.log_tail:
                    err.print(f"  | {line}", markup=False)
            if outcome.log_path:
                err.print(f"  full log: {outcome.log_path}", markup=False)
    report: dict[str, Any] = {"builds": [_outcome_json(o, builder.t0) for o in outcomes]}
    if interrupted:
        if as_json:
            out.print_json(json.dumps(report))
        raise Interrupted(
            "interrupted: running builds were stopped and cleaned up",
            hint="run the same command again; finished images are kept and skipped",
        )
    failed = [o for o in outcomes if not o.state.ok]
    if not no_test:
        report["tests"] = _test_built(client, outcomes, gpu, junit)
    tests_failed = any(not t["passed"] for t in report.get("tests", []))
    publish_error: PublishFailed | None = None
    selected = [(o.variant, o.image_id or "") for o in outcomes if o.variant in resolution.selected]
    made: list[tuple[ResolvedVariant, Made]] = []
    if sif and not failed and not tests_failed:
        made = _grid_outputs(
            client, selected, sif_dir=sif_dir, allow_untested=no_test, sandboxes=True
        )
        report["sif"] = [make_sif.summary(m) for _, m in made]
        if not no_test:
            report["sif_tests"] = tests = _test_sifs([m.path for _, m in made], gpu, None)
            tests_failed = any(not t["passed"] for t in tests)
    if push and not failed and not tests_failed:
        report["publish"], publish_error = _publish_and_report(
            client, selected, registry=registry, dry_run=False, force=force
        )
        if made and publish_error is None:
            report["publish_sif"], publish_error = _push_sifs(made, registry, force=force)
    if as_json:
        out.print_json(json.dumps(report))
    if failed:
        names_failed = ", ".join(f"{o.variant.key} ({o.state.value})" for o in failed)
        raise BuildFailed(
            f"{len(failed)} of {len(outcomes)} images not built: {names_failed}"
            + ("; nothing was published" if push else ""),
            hint="see the log tails above; fix the spec or the cause and run again",
        )
    if tests_failed:
        raise TestsFailed(
            "smoke tests failed (see the table above)" + ("; nothing was published" if push else "")
        )
    if publish_error is not None:
        raise publish_error


def _test_built(
    client: DockerClient, outcomes: list[Outcome], gpu: GpuMode, junit: Path | None
) -> list[dict[str, Any]]:
    """Smoke-test what a build produced; up-to-date images with a passing result are not rerun."""
    targets = []
    for outcome in outcomes:
        image_id = outcome.image_id or ""
        if not outcome.state.ok:
            continue
        earlier = session.load_result(image_id)
        if outcome.state is State.UP_TO_DATE and earlier and earlier.get("passed"):
            err.print(
                f"{outcome.variant.key}: up to date, passed its smoke tests at"
                f" {earlier.get('finished', '?')} (same image ID)",
                markup=False,
            )
            continue
        targets.append((outcome.variant, image_id))
    try:
        return _run_tests(client, targets, gpu, junit)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while smoke-testing: the test containers were removed",
            hint="hepml-images test runs the smoke tests again without rebuilding",
        ) from None


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
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say it is our bug
        err.print(f"internal error: {type(exc).__name__}: {exc}", markup=False)
        err.print(
            "this is a bug in hepml-images; set HEPML_DEBUG=1 for the traceback", markup=False
        )
        if os.environ.get("HEPML_DEBUG"):
            traceback.print_exc()
        return 1
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
