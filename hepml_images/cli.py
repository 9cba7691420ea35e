"""The ``hepml-images`` command line: the only module that prints, reads the clock or exits.

Exit codes: 0 success, 2 bad input (spec or arguments), 1 unexpected internal error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path  # noqa: TC003 - typer reads the annotations at run time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hepml_images import __version__
from hepml_images.errors import HepmlError, UsageError
from hepml_images.pipeline import (
    FILENAMES,
    render_variants,
    resolve_directory,
    resolve_specs,
    write_build_dir,
)
from hepml_images.spec.load import shipped_dir
from hepml_images.spec.model import Bootstrap
from hepml_images.spec.schema import SPEC_SCHEMA

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant

app = typer.Typer(
    name="hepml-images",
    help="Reproducible container images for HEP machine learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
