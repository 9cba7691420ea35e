"""Smoke tests on a SIF file: what grid sites get, run (side effects: engine, subprocesses).

In: a SIF file made by ``make``. Out: an ``ImageReport`` of the same checks the image passed,
run inside the SIF's own root filesystem with the environment of its ``/.singularity.d``:

- with Apptainer installed: ``apptainer exec --cleanenv [--nv] FILE.sif …`` per check;
- without it: the primary partition is read back with ``sqfs2tar`` (squashfs-tools-ng, an
  implementation independent of the mksquashfs that wrote it), loaded into the engine as a
  one-layer image whose configuration sets nothing (like ``--cleanenv``: no Env, no labels from
  the image), and every check runs as ``/.singularity.d/actions/exec CHECK…``, so the
  environment comes only from the SIF's environment scripts, as under Apptainer.

Which checks: the SIF's labels name the spec, variant and content digest it was built from.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepml_images.build.images import loaded_id, write_archive
from hepml_images.engine import EngineError
from hepml_images.errors import HepmlError
from hepml_images.hashing import sha256_file
from hepml_images.sif import format as sif_format
from hepml_images.smoke.runner import CheckResult, Status, run_check
from hepml_images.smoke.session import ImageReport, check_image
from hepml_images.times import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable

    from hepml_images.engine import Engine
    from hepml_images.resolve import ResolvedVariant
    from hepml_images.smoke.checks import Check
    from hepml_images.smoke.runner import GpuHost, GpuMode

EXEC_ACTION = "/.singularity.d/actions/exec"
SIF_LABEL = "io.hepml.sif.sha256"
_OUTPUT_CHARS = 4000


class SifCheckFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The SIF could not be opened or loaded for testing."""


def sif_labels(path: Path) -> dict[str, str]:
    """The labels object of a SIF file (the image's labels, as ``apptainer inspect`` shows)."""
    try:
        info = sif_format.read_sif(path)
    except (OSError, sif_format.SifError) as exc:
        raise SifCheckFailed(f"cannot read {path}: {exc}") from None
    for descriptor in info.descriptors:
        if descriptor.data_type == sif_format.DataType.LABELS:
            data = io.BytesIO()
            with path.open("rb") as source:
                sif_format.copy_object(source, descriptor, data)
            labels: dict[str, str] = json.loads(data.getvalue())
            return labels
    return {}


def load_rootfs(engine: Engine, path: Path, *, epoch: int) -> str:
    """Load the SIF's primary partition into the engine as a bare image; return its ID."""
    sqfs2tar = shutil.which("sqfs2tar")
    if sqfs2tar is None:
        raise SifCheckFailed(
            "testing a SIF without Apptainer needs sqfs2tar",
            hint="install squashfs-tools-ng (`make setup` does), or install Apptainer",
        )
    info = sif_format.read_sif(path)
    partition = sif_format.primary_partition(info)
    sha = sha256_file(path)
    with tempfile.TemporaryDirectory(prefix="hepml-sifcheck-", dir=path.parent) as tmp:
        squashfs, layer, archive = (Path(tmp) / n for n in ("p.sqfs", "layer.tar", "image.tar"))
        with path.open("rb") as source, squashfs.open("wb") as target:
            sif_format.copy_object(source, partition, target)
        with layer.open("wb") as target:
            done = subprocess.run(  # noqa: S603 - fixed argv of files we made
                [sqfs2tar, "--root-becomes", ".", str(squashfs)],
                stdout=target,
                stderr=subprocess.PIPE,
                check=False,
            )
        if done.returncode != 0:
            raise SifCheckFailed(
                f"sqfs2tar could not read the root filesystem of {path}: "
                + done.stderr.decode(errors="replace").strip()[-500:]
            )
        squashfs.unlink()
        diff_id = "sha256:" + sha256_file(layer)
        config = {
            "architecture": sif_format.arch_name(partition.partition.arch)
            if partition.partition
            else "amd64",
            "config": {"Cmd": ["/.singularity.d/actions/run"], "Labels": {SIF_LABEL: sha}},
            "created": rfc3339(epoch),
            "history": [{"created": rfc3339(epoch), "created_by": f"sqfs2tar {path.name}"}],
            "os": "linux",
            "rootfs": {"diff_ids": [diff_id], "type": "layers"},
        }
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        reference = f"hepml-sif-check:{sha[:16]}"
        write_archive(archive, layer, raw, [reference])
        layer.unlink()
        try:
            engine.load(archive)
            image_id = loaded_id(engine, reference)
        except EngineError as exc:
            raise SifCheckFailed(
                f"the engine refused the SIF's root filesystem: {exc.message}"
            ) from None
    return image_id


def _through_exec(check: Check) -> Check:
    return replace(check, argv=(EXEC_ACTION, *check.argv))


ENGINE_RUNNER = "the engine (its root filesystem, /.singularity.d/actions/exec)"


def apptainer_version(command: str) -> str:
    """``apptainer --version`` (``apptainer version 1.4.5``), or the command when it fails."""
    try:
        done = subprocess.run(  # noqa: S603 - the Apptainer found on PATH
            [command, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return command
    return done.stdout.strip() or command


def apptainer_runner(command: str, path: Path) -> Callable[[Check], CheckResult]:
    """Run each check with ``apptainer exec --cleanenv [--nv]`` on the SIF file."""

    def run(check: Check) -> CheckResult:
        argv = [command, "exec", "--cleanenv"]
        if check.gpu:
            argv.append("--nv")
        argv += [str(path), *check.argv]
        started = time.monotonic()
        try:
            done = subprocess.run(  # noqa: S603 - argv of a check, no shell
                argv,
                capture_output=True,
                timeout=check.timeout_s,
                check=False,
            )
            code, output = done.returncode, (done.stdout + done.stderr).decode(errors="replace")
            message = "" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            code, output, message = 1, "", f"timed out after {check.timeout_s} s"
        output = output[-_OUTPUT_CHARS:]
        if code != 0 and output.strip():
            message += ": " + output.strip().splitlines()[-1][:300]
        return CheckResult(
            check=check,
            status=Status.PASSED if code == 0 else Status.FAILED,
            seconds=time.monotonic() - started,
            message=message,
            output=output,
        )

    return run


def check_sif(  # noqa: PLR0913 - keyword-only settings
    engine: Engine | None,
    variant: ResolvedVariant,
    path: Path,
    *,
    gpu: GpuMode,
    host: Callable[[], GpuHost],
    apptainer: str | None,
    epoch: int,
) -> ImageReport:
    """Smoke-test the SIF file with Apptainer, or else in its root filesystem on the engine."""
    artifact = f"{path.name} (SIF)"
    if apptainer is not None:
        run = apptainer_runner(apptainer, path)
        report = check_image(
            engine,
            variant,
            f"sif:{path}",
            gpu=gpu,
            host=host,
            run=run,
            artifact=artifact,
        )
        return replace(report, runner=f"apptainer exec --cleanenv ({apptainer_version(apptainer)})")
    if engine is None:
        raise SifCheckFailed("testing a SIF without Apptainer needs the Docker Engine")
    on = engine
    image_id = load_rootfs(on, path, epoch=epoch)
    try:

        def in_rootfs(check: Check) -> CheckResult:
            result = run_check(on, image_id, _through_exec(check))
            return replace(result, check=check)

        report = check_image(
            on, variant, image_id, gpu=gpu, host=host, run=in_rootfs, artifact=artifact
        )
        return replace(report, runner=ENGINE_RUNNER)
    finally:
        with contextlib.suppress(EngineError):
            on.remove_image(image_id, force=True)


def report_json(report: ImageReport, path: Path) -> dict[str, Any]:
    """The ``--json`` form of a SIF's test."""
    return {
        "sif": str(path),
        "spec": report.variant.spec,
        "variant": report.variant.slug,
        "passed": report.passed,
        "gpu": report.gpu_note,
        "runner": report.runner,
        "checks": [
            {"name": r.check.name, "status": r.status.value, "message": r.message}
            for r in report.results
        ],
    }
