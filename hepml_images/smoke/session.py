"""Smoke-test images: choose the checks, run them, keep the result tied to the image ID.

A result is stored per image ID (``state.results_dir()``), so that ``publish`` can refuse an
image that has no passing result for exactly the bytes it would push.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hepml_images import __version__, state
from hepml_images.smoke import checks as checks_
from hepml_images.smoke.checks import Check
from hepml_images.smoke.runner import (
    CheckResult,
    GpuHost,
    GpuMode,
    Status,
    preflight,
    run_all,
    run_check,
    skipped,
)
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from hepml_images.engine import Engine
    from hepml_images.resolve import ResolvedVariant
    from hepml_images.smoke.runner import Runner


#: The GPU note of an image that is not meant for a GPU.
NOT_GPU = "not a GPU image"


@dataclass(kw_only=True)
class ImageReport:
    """Every check of one image."""

    variant: ResolvedVariant
    image_id: str
    results: list[CheckResult] = field(default_factory=list)
    gpu_note: str = ""
    #: what was tested when not the image itself (a SIF file)
    artifact: str = ""
    #: how a SIF's checks ran: ``apptainer exec --cleanenv`` (with its version) or the engine
    runner: str = ""

    @property
    def name(self) -> str:
        """The image, or the artifact made from it."""
        return self.artifact or self.variant.content_ref

    @property
    def passed(self) -> bool:
        """No check failed (skipped ones are said in the summary)."""
        return bool(self.results) and all(r.status is not Status.FAILED for r in self.results)

    def count(self, status: Status) -> int:
        """How many checks ended with ``status``."""
        return sum(1 for r in self.results if r.status is status)


def _preflight_check(cuda: str | None) -> Check:
    return Check(
        name="GPU driver preflight" + (f" (CUDA {cuda})" if cuda else ""),
        component="gpu",
        argv=(),
        gpu=True,
    )


def _gpu_results(
    run: Runner,
    variant: ResolvedVariant,
    mode: GpuMode,
    host: Callable[[], GpuHost],
) -> tuple[list[CheckResult], str]:
    gpu_checks = checks_.gpu_checks(variant)
    if mode is GpuMode.skip:
        return [], "GPU checks skipped (--gpu skip)"
    if not checks_.wants_gpu(variant):
        return [], NOT_GPU
    found = host()
    cuda = checks_.cuda_version(variant)
    pre = _preflight_check(cuda)
    if not found.usable:
        why = f"{found.problem}"
        if mode is GpuMode.require:
            return [skipped(pre, why, failed=True)], f"GPU checks FAILED: {why}"
        return [skipped(c, why) for c in gpu_checks], f"GPU checks skipped: {why}"
    ok, message = preflight(found, cuda)
    pre_result = CheckResult(
        check=pre,
        status=Status.PASSED if ok else Status.FAILED,
        seconds=0.0,
        message=message,
        output=message,
    )
    if not ok:
        return [pre_result], f"GPU preflight failed: {message}"
    note = f"{len(found.gpus)} GPU(s): {', '.join(found.gpus)}; driver {found.driver}"
    return [pre_result, *run_all(run, gpu_checks, parallel=1)], note


def check_image(  # noqa: PLR0913 - keyword-only settings
    engine: Engine | None,
    variant: ResolvedVariant,
    image_id: str,
    *,
    gpu: GpuMode,
    host: Callable[[], GpuHost],
    parallel: int = 2,
    run: Runner | None = None,
    artifact: str = "",
) -> ImageReport:
    """Run the component checks, the spec's smoke commands and the GPU checks.

    By default each check runs in a container of ``image_id``; ``run`` runs them elsewhere (in
    a SIF's root filesystem, under Apptainer), and ``artifact`` names what was tested then.
    """
    report = ImageReport(variant=variant, image_id=image_id, artifact=artifact)
    if run is None:
        if engine is None:
            raise ValueError("check_image needs an engine or a runner")
        on = engine
        run = lambda check: run_check(on, image_id, check)  # noqa: E731 - one-line runner
    plain = [*checks_.component_checks(variant), *checks_.smoke_checks(variant)]
    report.results = run_all(run, plain, parallel=parallel)
    gpu_results, report.gpu_note = _gpu_results(run, variant, gpu, host)
    report.results += gpu_results
    return report


def result_path(image_id: str) -> Path:
    """Where the result of the image with this ID is kept."""
    return state.results_dir() / f"{image_id.removeprefix('sha256:')}.json"


def to_json(report: ImageReport) -> dict[str, Any]:
    """The stored (and ``--json``) form of a report."""
    variant = report.variant
    return {
        "image_id": report.image_id,
        "image": variant.content_ref,
        "spec": variant.spec,
        "variant": variant.slug,
        "digest": variant.digest,
        "passed": report.passed,
        "gpu": report.gpu_note,
        "tool_version": __version__,
        "finished": rfc3339(time.time()),
        "checks": [
            {
                "name": r.check.name,
                "component": r.check.component,
                "status": r.status.value,
                "seconds": round(r.seconds, 2),
                "message": r.message,
                "output": r.output,
            }
            for r in report.results
        ],
    }


def save(report: ImageReport) -> Path:
    """Store the result for the image ID (atomically: a reader never sees half a file)."""
    path = result_path(report.image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_json(report), indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def load_result(image_id: str) -> dict[str, Any] | None:
    """The stored result for an image ID, if any."""
    path = result_path(image_id)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("image_id") == image_id else None


def junit_xml(reports: Sequence[ImageReport]) -> bytes:
    """JUnit XML: one test suite per image, one test case per check."""
    root = ET.Element("testsuites", name="hepml-images smoke tests")
    for report in reports:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=report.name,
            tests=str(len(report.results)),
            failures=str(report.count(Status.FAILED)),
            skipped=str(report.count(Status.SKIPPED)),
            errors="0",
            time=f"{sum(r.seconds for r in report.results):.3f}",
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="image_id", value=report.image_id)
        ET.SubElement(props, "property", name="gpu", value=report.gpu_note)
        for result in report.results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{report.variant.spec}.{report.variant.slug}",
                name=result.check.name,
                time=f"{result.seconds:.3f}",
            )
            if result.status is Status.FAILED:
                failure = ET.SubElement(case, "failure", message=result.message)
                failure.text = result.output
            elif result.status is Status.SKIPPED:
                ET.SubElement(case, "skipped", message=result.message)
            if result.output:
                ET.SubElement(case, "system-out").text = result.output
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
