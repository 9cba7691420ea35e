"""Run checks against one image in throwaway containers, and the GPU preflight.

Each check gets its own container, with no network, that is removed whatever happens. GPU
checks ask the engine for every GPU (the same request as ``docker run --gpus all``) and only
run after the preflight found a GPU, the NVIDIA runtime and a new enough driver.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, TypeAlias

from hepml_images import compat

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from hepml_images.engine import Engine
    from hepml_images.smoke.checks import Check

_OUTPUT_CHARS = 4000
SMOKE_LABEL = "io.hepml.smoke"


class Status(str, Enum):
    """A check's result."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What one check did."""

    check: Check
    status: Status
    seconds: float
    message: str
    output: str


class GpuMode(str, Enum):
    """``--gpu``: run GPU checks when possible, insist on them, or leave them out."""

    auto = "auto"
    require = "require"
    skip = "skip"


@dataclass(frozen=True, kw_only=True)
class GpuHost:
    """What the host offers for GPU containers."""

    gpus: tuple[str, ...]
    driver: str | None
    runtime: bool
    problem: str | None

    @property
    def usable(self) -> bool:
        """GPU containers can run here."""
        return self.problem is None


def _nvidia_smi(*args: str) -> list[str] | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [tool, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def probe_gpu_host(engine: Engine | None) -> GpuHost:
    """Look for GPUs (nvidia-smi on the host) and the NVIDIA container runtime."""
    rows = _nvidia_smi("--query-gpu=name,driver_version", "--format=csv,noheader")
    runtimes: dict[str, object] = {}
    if engine is not None:
        with contextlib.suppress(Exception):
            runtimes = engine.info().get("Runtimes") or {}
    toolkit = any(
        shutil.which(tool) for tool in ("nvidia-container-runtime-hook", "nvidia-container-cli")
    )
    runtime = "nvidia" in runtimes or toolkit
    gpus = tuple(row.split(",")[0].strip() for row in rows or [])
    driver = rows[0].split(",")[-1].strip() if rows else None
    problem = None
    if not gpus:
        problem = "no NVIDIA GPU on this host (nvidia-smi is missing or lists none)"
    elif not runtime:
        problem = (
            "the Docker Engine has no NVIDIA runtime: install nvidia-container-toolkit and run"
            " `nvidia-ctk runtime configure --runtime=docker`, then restart dockerd"
        )
    return GpuHost(gpus=gpus, driver=driver, runtime=runtime, problem=problem)


def preflight(host: GpuHost, cuda: str | None) -> tuple[bool, str]:
    """Compare the host driver with the image's CUDA before any GPU container starts."""
    if cuda is None or host.driver is None:
        return True, f"driver {host.driver or '?'}; the image names no CUDA version"
    verdict = compat.check_driver(host.driver, cuda)
    return verdict.verdict is not compat.DriverVerdict.TOO_OLD, verdict.message


def run_check(engine: Engine, image_id: str, check: Check) -> CheckResult:
    """Run one check in a fresh container (removed afterwards)."""
    started = time.monotonic()
    done = engine.run(
        image_id, check.argv, gpu=check.gpu, timeout_s=check.timeout_s, labels={SMOKE_LABEL: "1"}
    )
    seconds = time.monotonic() - started
    output = done.output[-_OUTPUT_CHARS:]
    if done.timed_out:
        message = f"timed out after {check.timeout_s} s"
    elif done.code == 0:
        message = ""
    else:
        last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "")
        message = f"exit {done.code}: {last[:300]}" if last else f"exit {done.code}"
    status = Status.PASSED if done.code == 0 and not done.timed_out else Status.FAILED
    return CheckResult(check=check, status=status, seconds=seconds, message=message, output=output)


def skipped(check: Check, why: str, *, failed: bool = False) -> CheckResult:
    """A check that did not run, as skipped (or failed, when it had to run)."""
    return CheckResult(
        check=check,
        status=Status.FAILED if failed else Status.SKIPPED,
        seconds=0.0,
        message=why,
        output="",
    )


if TYPE_CHECKING:
    #: runs one check somewhere (a container of the engine, ``apptainer exec`` …)
    Runner: TypeAlias = Callable[[Check], CheckResult]


def run_all(run: Runner, checks: Sequence[Check], *, parallel: int = 2) -> list[CheckResult]:
    """Run checks (a few at a time); results in the order of ``checks``."""
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(run, checks))
