"""How the pipeline looks: live progress, tables, and the ``--json`` forms (the CLI layer).

``Display`` implements ``pipeline.Events`` on a rich console. User text (names, paths, messages,
command output) is always passed as ``Text`` or printed with ``markup=False``: nothing a spec or
a path holds is read as rich markup.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from hepml_images.build.graph import Outcome, State
from hepml_images.sif import check as sif_check
from hepml_images.sif import make as make_sif
from hepml_images.smoke import session
from hepml_images.smoke.runner import Status
from hepml_images.spec.model import Bootstrap

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path
    from types import TracebackType

    from rich.console import Console
    from typing_extensions import Self

    from hepml_images.doctor import Report
    from hepml_images.pipeline import BuildRun, Tested
    from hepml_images.publish import Published, SifPublished
    from hepml_images.resolve import ResolvedVariant
    from hepml_images.smoke.session import ImageReport
    from hepml_images.verify import Verdict

_STYLE = {
    State.WAITING: "dim",
    State.BUILDING: "cyan",
    State.BUILT: "green",
    State.UP_TO_DATE: "green",
    State.PULLED: "green",
    State.FAILED: "bold red",
    State.BLOCKED: "yellow",
    State.CANCELLED: "yellow",
}


def _elapsed(outcome: Outcome) -> str:
    seconds = outcome.seconds
    if seconds is None:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


class BuildProgress:
    """A live table on a terminal; one line per change elsewhere (CI logs)."""

    def __init__(self, console: Console, outcomes: Sequence[Outcome]) -> None:
        self.console = console
        self.outcomes = list(outcomes)
        self._lock = threading.Lock()
        self._last: dict[str, tuple[State, str]] = {}
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                get_renderable=self._table, console=console, refresh_per_second=4, transient=False
            )

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("image", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("step", overflow="ellipsis", no_wrap=True)
        for outcome in self.outcomes:
            table.add_row(
                Text(outcome.variant.key),
                Text(outcome.state.value, style=_STYLE[outcome.state]),
                _elapsed(outcome),
                Text(outcome.step or (outcome.reason or "")),
            )
        return table

    def update(self, outcome: Outcome) -> None:
        """Called from build threads on every change."""
        if self._live is not None:
            return  # the live table polls the outcomes itself
        key = outcome.variant.key
        now = (outcome.state, outcome.step)
        with self._lock:
            if self._last.get(key) == now:
                return
            self._last[key] = now
            detail = outcome.step or outcome.reason or ""
            stamp = time.strftime("%H:%M:%S")
            self.console.print(
                f"{stamp} {key}: {outcome.state.value}" + (f" · {detail}" if detail else ""),
                markup=False,
            )

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()


def summary_table(outcomes: Sequence[Outcome]) -> Table:
    """The end-of-build table: what happened to each image."""
    table = Table(title="build summary")
    for column in ("image", "state", "image ID", "time", "note"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        table.add_row(
            Text(outcome.variant.content_ref),
            Text(outcome.state.value, style=_STYLE[outcome.state]),
            (outcome.image_id or "")[7:19],
            _elapsed(outcome),
            Text(outcome.reason or ""),
        )
    return table


_CHECK_STYLE = {
    Status.PASSED: "green",
    Status.FAILED: "bold red",
    Status.SKIPPED: "yellow",
}
#: How many lines of a failed check's output are shown.
_OUTPUT_TAIL = 15


class StepProgress:
    """Progress of a slow step: a bar on a terminal, a line per quarter in logs."""

    def __init__(self, console: Console, what: str, terminated: threading.Event) -> None:
        self.console = console
        self.what = what
        self.terminated = terminated
        self.marks: dict[str, int] = {}
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self.bar = Progress(console=self.console, transient=True)
            self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, step: str, done: int, total: int) -> None:
        """``done`` of ``total`` of ``step``; raises KeyboardInterrupt once SIGTERM came."""
        if self.terminated.is_set():  # a KeyboardInterrupt swallowed by a finalizer
            raise KeyboardInterrupt
        if self.bar is not None:
            if step not in self.tasks:
                self.tasks[step] = self.bar.add_task(f"{self.what}: {step}", total=total or None)
            self.bar.update(self.tasks[step], completed=done, total=total or None)
            return
        percent = 100 * done // total if total else 0
        if self.marks.get(step) != percent // 25:
            self.marks[step] = percent // 25
            self.console.print(f"  {self.what}: {step} {percent}%", markup=False)


class Display:
    """The pipeline's events (``pipeline.Events``) shown on the error console."""

    def __init__(self, console: Console, terminated: threading.Event) -> None:
        self.console = console
        self.terminated = terminated
        self._progress: BuildProgress | None = None

    def note(self, message: str) -> None:
        """One line, printed as it is."""
        self.console.print(message, markup=False)

    @contextlib.contextmanager
    def building(self, outcomes: Sequence[Outcome]) -> Iterator[None]:
        """The live build table (a line per change in logs)."""
        self._progress = BuildProgress(self.console, outcomes)
        try:
            with self._progress:
                yield
        finally:
            self._progress = None

    def outcome(self, outcome: Outcome) -> None:
        """An image's build changed."""
        if self._progress is not None:
            self._progress.update(outcome)

    def built(self, outcomes: Sequence[Outcome]) -> None:
        """The summary, and for each failed image why, with its log's last lines."""
        self.console.print(summary_table(outcomes))
        for outcome in outcomes:
            if outcome.state is not State.FAILED:
                continue
            self.note(f"\n{outcome.variant.key} failed: {outcome.reason}")
            if outcome.hint:
                self.note(f"  hint: {outcome.hint}")
            if outcome.log_tail:
                self.note("  last lines of the log:")
                for line in outcome.log_tail:
                    self.note(f"  | {line}")
            if outcome.log_path:
                self.note(f"  full log: {outcome.log_path}")

    def step(self, what: str) -> StepProgress:
        """A progress bar (or quarter lines) for one slow step."""
        return StepProgress(self.console, what, self.terminated)

    def tested(self, reports: Sequence[ImageReport]) -> None:
        """The results table, then the output of each failed check."""
        table = Table(title="smoke tests")
        for column in ("image", "check", "result", "time", "detail"):
            table.add_column(column, overflow="fold")
        for report in reports:
            name = report.artifact or report.variant.key
            for result in report.results:
                table.add_row(
                    Text(name),
                    Text(result.check.name),
                    Text(result.status.value, style=_CHECK_STYLE[result.status]),
                    f"{result.seconds:.1f}s",
                    Text(result.message),
                )
            if report.gpu_note and report.gpu_note != session.NOT_GPU:
                table.add_row(Text(name), "GPU", "", "", Text(report.gpu_note))
        self.console.print(table)
        for report in reports:
            for result in report.results:
                if result.status is Status.FAILED and result.output:
                    name = report.artifact or report.variant.key
                    self.note(f"\n{name}: {result.check.name} failed:")
                    for line in result.output.splitlines()[-_OUTPUT_TAIL:]:
                        self.note(f"  | {line}")

    def published(self, results: Sequence[Published], *, dry_run: bool) -> None:
        """A row per tag (or per refused image), then the hints."""
        table = Table(title="publish (dry run)" if dry_run else "publish")
        for column in ("image", "repository", "tag", "result", "detail"):
            table.add_column(column, overflow="fold")
        for result in results:
            key, repository = Text(result.variant.key), Text(result.repository)
            if result.error and not result.tags:
                table.add_row(
                    key, repository, "", Text("refused", style="bold red"), Text(result.error)
                )
            for tag in result.tags:
                style = "bold red" if tag.action in {"refused", "failed"} else "green"
                table.add_row(
                    key, repository, Text(tag.tag), Text(tag.action, style=style), Text(tag.detail)
                )
            if result.error and result.tags:
                table.add_row(
                    key, repository, "", Text("failed", style="bold red"), Text(result.error)
                )
        self.console.print(table)
        for result in results:
            if result.hint:
                self.note(f"hint: {result.hint}")

    def sifs_published(self, rows: Sequence[SifPublished]) -> None:
        """A row per ORAS reference."""
        table = Table(title="publish SIF (ORAS)")
        for column in ("image", "reference", "result", "digest"):
            table.add_column(column, overflow="fold")
        for row in rows:
            style = "bold red" if row.action == "refused" else "green"
            table.add_row(
                Text(row.variant.key),
                Text(row.reference),
                Text(row.action, style=style),
                Text(row.manifest),
            )
        self.console.print(table)


_STATUS_STYLE = {"ok": "green", "warning": "yellow", "missing": "red"}


def show_doctor(console: Console, report: Report) -> None:
    """The doctor's table, then a hint per check that has one."""
    table = Table(title="hepml-images doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        status = Text(check.status.value, style=_STATUS_STYLE[check.status.value])
        table.add_row(Text(check.name), status, Text(check.detail))
    console.print(table)
    hints = [c for c in report.checks if c.hint]
    if hints:
        console.print("hints:")
    for check in hints:
        console.print(f"  {check.name}: {check.hint}", markup=False)


def image_table(title: str, data: dict[str, Any]) -> Table:
    """What `inspect` shows: IDs, digests, the smoke-test result, the labels."""
    table = Table(title=Text(title), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("image_id", "digest", "created", "architecture"):
        table.add_row(key, Text(str(data[key] or "")))
    if data["smoke_test"] is not None:
        verdict = "passed" if data["smoke_test"]["passed"] else "FAILED"
        table.add_row("smoke tests", f"{verdict} ({data['smoke_test']['finished']})")
    for key, value in data["labels"].items():
        table.add_row(Text(key), Text(value))
    return table


# --- machine-readable forms (--json) --------------------------------------------------------

#: The versions `list` shows.
KEY_VERSIONS = ("python", "hdf5", "tensorflow", "accelerator", "cuda", "cudnn", "analysisbase")


def parent_text(variant: ResolvedVariant) -> str:
    """What a variant is built on: its parent variant, a bootstrap, or a base image."""
    if variant.parent is not None:
        return f"{variant.parent.spec}:{variant.parent.slug}"
    base = variant.content.base
    if base is None:
        return "?"
    if isinstance(base, Bootstrap):
        return f"bootstrap {base.suite}"
    return base.image


def variant_json(variant: ResolvedVariant) -> dict[str, Any]:
    """A variant for `list --json`."""
    return {
        "spec": variant.spec,
        "variant": variant.slug,
        "matrix": dict(variant.matrix),
        "source": variant.source,
        "image": variant.image,
        "tags": list(variant.tags),
        "parent": f"{variant.parent.spec}:{variant.parent.slug}" if variant.parent else None,
        "base": None if variant.parent else parent_text(variant),
        "versions": dict(variant.versions),
        "digest": variant.digest,
    }


def variants_table(variants: Sequence[ResolvedVariant], specs: int) -> Table:
    """The `list` table."""
    table = Table(title=f"{specs} specs, {len(variants)} variants")
    for column in ("spec", "variant", "tags", "base / parent", "versions", "digest"):
        table.add_column(column, overflow="fold")
    for variant in variants:
        versions = variant.version_map
        shown = " ".join(f"{k}={versions[k]}" for k in KEY_VERSIONS if k in versions)
        table.add_row(
            Text(variant.spec),
            Text(variant.slug),
            Text(" ".join(variant.tags)),
            Text(parent_text(variant)),
            Text(shown),
            variant.digest[7:19],
        )
    return table


def outcome_json(outcome: Outcome, t0: float) -> dict[str, Any]:
    """One image's build for `build --json`."""
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
        "hint": outcome.hint,
        "pulled_from": outcome.pulled_from,
        "started": offset(outcome.started),
        "finished": offset(outcome.finished),
        "log": str(outcome.log_path) if outcome.log_path else None,
    }


def published_json(results: Sequence[Published]) -> list[dict[str, Any]]:
    """Publication results for `--json`."""
    return [
        {
            "spec": result.variant.spec,
            "variant": result.variant.slug,
            "image_id": result.image_id,
            "published_id": result.published_id,
            "repository": result.repository,
            "manifest": result.manifest,
            "tags": [{"tag": t.tag, "action": t.action, "detail": t.detail} for t in result.tags],
            "error": result.error,
        }
        for result in results
    ]


def sifs_published_json(rows: Sequence[SifPublished]) -> list[dict[str, Any]]:
    """SIF publication results for `--json`."""
    return [
        {
            "spec": row.variant.spec,
            "variant": row.variant.slug,
            "reference": row.reference,
            "action": row.action,
            "manifest": row.manifest,
            "layer": row.layer,
        }
        for row in rows
    ]


def tested_json(tested: Tested) -> list[dict[str, Any]]:
    """Image smoke-test reports for `--json`."""
    return [session.to_json(r) for r in tested.reports]


def sif_tested_json(tested: Tested, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """SIF smoke-test reports for `--json`."""
    return [sif_check.report_json(r, p) for r, p in zip(tested.reports, paths, strict=True)]


def build_json(run: BuildRun, *, test: bool) -> dict[str, Any]:
    """What `build --json` prints."""
    report: dict[str, Any] = {"builds": [outcome_json(o, run.built.t0) for o in run.built.outcomes]}
    if run.built.interrupted:
        return report
    if test:
        report["tests"] = tested_json(run.tested)
    if run.sifs:
        report["sif"] = [make_sif.summary(m) for _, m in run.sifs]
        if test:
            report["sif_tests"] = sif_tested_json(run.sif_tested, [m.path for _, m in run.sifs])
    if run.cached:
        report["cache"] = published_json(run.cached)
    if run.published:
        report["publish"] = published_json(run.published)
    if run.sifs_published:
        report["publish_sif"] = sifs_published_json(run.sifs_published)
    return report


# --- verify ---------------------------------------------------------------------------------

#: Paths listed per differing layer before "… and N more".
VERIFY_PATHS = 40


def verdict_summary(verdict: Verdict) -> str:
    """One line: how many layers and paths differ, and whether the configuration does."""
    layers = [layer for layer in verdict.layers if not layer.identical]
    paths = sum(len(layer.differences) for layer in layers)
    parts = []
    if layers:
        parts.append(f"{len(layers)} of {len(verdict.layers)} layers, {paths} paths")
    if verdict.config_fields:
        parts.append("configuration: " + ", ".join(verdict.config_fields))
    return "; ".join(parts) or "identical"


def verdict_lines(verdict: Verdict) -> list[str]:
    """The report of ``verify``: per layer identical or its differing paths."""
    lines = [f"{verdict.reference}: {verdict.image_id}", f"rebuilt: {verdict.rebuilt_id}"]
    for layer in verdict.layers:
        if layer.identical:
            lines.append(f"layer {layer.index}: identical {layer.diff_id_a}")
            continue
        lines.append(f"layer {layer.index}: {layer.diff_id_a} != {layer.diff_id_b}")
        for difference in layer.differences[:VERIFY_PATHS]:
            what = {"only-a": "only in the image", "only-b": "only in the rebuild"}.get(
                difference.what, "differs in " + ", ".join(difference.fields)
            )
            lines.append(f"  /{difference.path.lstrip('/')}: {what}")
        if len(layer.differences) > VERIFY_PATHS:
            lines.append(f"  … and {len(layer.differences) - VERIFY_PATHS} more")
    if verdict.config_fields:
        lines.append("configuration differs in: " + ", ".join(verdict.config_fields))
    lines.append("identical" if verdict.identical else "different: " + verdict_summary(verdict))
    return lines


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    """The ``--json`` form of ``verify``."""
    return {
        "reference": verdict.reference,
        "image_id": verdict.image_id,
        "rebuilt_id": verdict.rebuilt_id,
        "identical": verdict.identical,
        "config_digests": list(verdict.config),
        "config_fields": list(verdict.config_fields),
        "layers": [
            {
                "index": layer.index,
                "identical": layer.identical,
                "diff_ids": [layer.diff_id_a, layer.diff_id_b],
                "differences": [
                    {"path": d.path, "what": d.what, "fields": list(d.fields)}
                    for d in layer.differences
                ],
            }
            for layer in verdict.layers
        ],
    }
