"""In-container GPU check: the framework sees a GPU and computes correctly on it.

Usage: ``gpu_check.py [--framework auto|tensorflow|torch|jax|cupy] [--min-devices N]``

Stand-alone (Python 3.8+, the standard library and the framework under test); the smoke-test
runner passes the source as ``python -c SOURCE ARGS...``, so nothing here relies on ``__file__``.

It lists the GPUs the framework sees, multiplies two known 1024x1024 float32 matrices on GPU 0,
compares the product with the same product on the CPU and with exact values computed here in
plain Python, and prints ONE line of JSON on stdout::

    {"ok": ..., "framework": ..., "framework_version": ..., "devices": [...],
     "device_used": ..., "check": "matmul 1024x1024", "max_abs_error": ..., "message": ...}

Exit status 0 when the check passed, 1 when it did not (no framework, no GPU, wrong result,
timeout). The matrices hold small integers, so their product is exact in float32 and also in
the reduced-precision modes (TF32) that GPUs use for float32 matrix products by default: any
error above the tolerance is a real fault.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

FRAMEWORKS = ("tensorflow", "torch", "jax", "cupy")
DISPLAY = {"tensorflow": "TensorFlow", "torch": "PyTorch", "jax": "JAX", "cupy": "CuPy"}
SIZE = 1024
DESCRIPTION = "In-container GPU check: the framework sees a GPU and computes correctly on it."
CHECK = f"matmul {SIZE}x{SIZE}"
TOLERANCE = 1e-3
DEFAULT_TIMEOUT_S = 300
# entries of the product recomputed exactly in plain Python (row, column)
SPOT_CHECKS = (
    (0, 0),
    (1, 2),
    (17, 900),
    (511, 512),
    (777, 3),
    (1000, 1001),
    (1023, 0),
    (1023, 1023),
)

_EMITTED = threading.Lock()


class CheckFailedError(Exception):
    """The check ran and failed; the message says why."""


class HostMatrix(Protocol):
    """A matrix on the host: a NumPy array or a CPU tensor."""

    def tolist(self) -> list[list[float]]:
        """The entries as nested lists, row by row."""


if TYPE_CHECKING:
    Products = tuple[HostMatrix, HostMatrix]


def a_value(i: int, k: int) -> int:
    """Entry (i, k) of the left matrix: integers in [-8, 8]."""
    return (i * 7 + k * 13) % 17 - 8


def b_value(k: int, j: int) -> int:
    """Entry (k, j) of the right matrix: integers in [-5, 5]."""
    return (k * 5 + j * 3 + (k * j) % 7) % 11 - 5


def flat(entry: Callable[[int, int], int]) -> list[float]:
    """A SIZE x SIZE matrix in row-major order."""
    return [float(entry(r, c)) for r in range(SIZE) for c in range(SIZE)]


def exact(i: int, j: int) -> int:
    """Entry (i, j) of the product, in exact integer arithmetic."""
    return sum(a_value(i, k) * b_value(k, j) for k in range(SIZE))


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON line (once, whoever gets here first)."""
    if not _EMITTED.acquire(blocking=False):
        return
    sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    sys.stdout.flush()


def base_result(framework: str | None) -> dict[str, Any]:
    """The result before anything is known."""
    return {
        "ok": False,
        "framework": framework,
        "framework_version": None,
        "devices": [],
        "device_used": None,
        "check": CHECK,
        "max_abs_error": None,
        "message": "",
    }


def driver_hint() -> str:
    """What the container tells about GPU access: CUDA_VISIBLE_DEVICES and the driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    parts = [
        "CUDA_VISIBLE_DEVICES is unset"
        if visible is None
        else f"CUDA_VISIBLE_DEVICES={visible!r}"
        + (" hides every GPU" if visible.strip() in {"", "-1", "none", "NoDevFiles"} else "")
    ]
    try:
        with Path("/proc/driver/nvidia/version").open(encoding="utf-8") as handle:
            first = handle.readline().strip()
        parts.append(f"NVIDIA kernel driver: {first}")
    except OSError:
        parts.append(
            "no NVIDIA kernel driver visible (/proc/driver/nvidia/version is missing): "
            "start the container with GPU access (docker run --gpus all, apptainer --nv)"
        )
    if not any(Path(f"/dev/nvidia{n}").exists() for n in range(16)):
        parts.append("no /dev/nvidia<N> device node in the container")
    return "; ".join(parts)


def too_few(framework: str, count: int, min_devices: int, detail: str) -> str:
    """The message for fewer GPUs than required, with hints on where GPU access is lost."""
    seen = "sees no GPU" if count == 0 else f"sees {count} GPU(s), {min_devices} required"
    return f"{DISPLAY[framework]} {seen}: {detail}; {driver_hint()}"


def cuda_version(number: int) -> str:
    """CUDA's version number (12040) as text (12.4)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def cudnn_version(number: object) -> str | None:
    """The version number of cuDNN (8902, 91900) as text (8.9.2, 9.19.0)."""
    if not isinstance(number, int) or number <= 0:
        return None
    if number >= 90000:  # noqa: PLR2004  # cuDNN 9 changed the encoding
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def host_list(matrix: HostMatrix) -> list[list[float]]:
    """A framework matrix on the host as nested Python lists (anything with ``tolist``)."""
    return [[float(x) for x in row] for row in matrix.tolist()]


def compare(gpu: list[list[float]], cpu: list[list[float]]) -> float:
    """Largest absolute difference: GPU vs CPU everywhere, GPU vs exact at the spot checks."""
    worst = 0.0
    for r in range(SIZE):
        gpu_row, cpu_row = gpu[r], cpu[r]
        for c in range(SIZE):
            diff = abs(gpu_row[c] - cpu_row[c])
            worst = max(worst, diff)
    for r, c in SPOT_CHECKS:
        worst = max(worst, abs(gpu[r][c] - exact(r, c)))
    return worst


# ---------------------------------------------------------------------------------------------
# one function per framework: (module, result to fill) -> gpu product, cpu product on the host
# ---------------------------------------------------------------------------------------------


def run_tensorflow(tf: ModuleType, result: dict[str, Any], min_devices: int) -> Products:
    """TensorFlow: list_physical_devices("GPU"), then a product pinned to /GPU:0."""
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        # too late (TensorFlow already initialised) or unsupported: harmless
        with contextlib.suppress(Exception):
            tf.config.experimental.set_memory_growth(gpu, True)  # noqa: FBT003
        try:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(str(details.get("device_name", gpu.name)))
        except Exception:  # noqa: BLE001
            names.append(str(gpu.name))
    result["devices"] = names
    try:
        build = tf.sysconfig.get_build_info()
        result["cuda_build"] = {
            "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"),
        }
    except Exception:  # noqa: BLE001
        result["cuda_build"] = None
    if len(gpus) < min_devices:
        built = tf.test.is_built_with_cuda()
        raise CheckFailedError(
            too_few(
                "tensorflow",
                len(gpus),
                min_devices,
                f"tf.config.list_physical_devices('GPU') returned {len(gpus)} device(s); "
                f"TensorFlow built with CUDA: {built}"
                f"{'' if built else ' (a CPU-only build: install tensorflow[and-cuda])'}",
            )
        )
    a_flat, b_flat = flat(a_value), flat(b_value)
    with tf.device("/GPU:0"):
        a = tf.constant(a_flat, dtype=tf.float32, shape=(SIZE, SIZE))
        b = tf.constant(b_flat, dtype=tf.float32, shape=(SIZE, SIZE))
        product = tf.linalg.matmul(a, b)
    device = str(product.device)
    result["device_used"] = device
    if "GPU:0" not in device:
        raise CheckFailedError(f"TensorFlow placed the product on {device}, not on /GPU:0")
    gpu_host = product.numpy()
    with tf.device("/CPU:0"):
        a_cpu = tf.constant(a_flat, dtype=tf.float32, shape=(SIZE, SIZE))
        b_cpu = tf.constant(b_flat, dtype=tf.float32, shape=(SIZE, SIZE))
        cpu_host = tf.linalg.matmul(a_cpu, b_cpu).numpy()
    return gpu_host, cpu_host


def run_torch(torch: ModuleType, result: dict[str, Any], min_devices: int) -> Products:
    """PyTorch: torch.cuda.device_count(), then a product on cuda:0."""
    result["cuda_build"] = {
        "cuda": torch.version.cuda,
        "cudnn": cudnn_version(torch.backends.cudnn.version()),
    }
    count = int(torch.cuda.device_count())
    result["devices"] = [str(torch.cuda.get_device_name(n)) for n in range(count)]
    if count < min_devices:
        built = torch.version.cuda
        raise CheckFailedError(
            too_few(
                "torch",
                count,
                min_devices,
                f"torch.cuda.device_count() returned {count}; "
                f"torch built with CUDA: {built or 'no (a CPU-only build)'}",
            )
        )
    a = torch.tensor(flat(a_value), dtype=torch.float32).reshape(SIZE, SIZE)
    b = torch.tensor(flat(b_value), dtype=torch.float32).reshape(SIZE, SIZE)
    product = torch.matmul(a.to("cuda:0"), b.to("cuda:0"))
    torch.cuda.synchronize(0)
    result["device_used"] = f"{product.device} ({torch.cuda.get_device_name(0)})"
    if product.device.type != "cuda":
        raise CheckFailedError(f"PyTorch computed on {product.device}, not on cuda:0")
    return product.cpu(), torch.matmul(a, b)


def run_jax(jax: ModuleType, result: dict[str, Any], min_devices: int) -> Products:
    """JAX: jax.devices("gpu"), then a product committed to the first GPU."""
    try:
        gpus = list(jax.devices("gpu"))
    except RuntimeError as error:
        gpus = []
        reason = f"jax.devices('gpu') raised: {str(error).splitlines()[0]}"
    else:
        reason = f"jax.devices('gpu') returned {len(gpus)} device(s)"
    result["devices"] = [str(getattr(d, "device_kind", d)) for d in gpus]
    if len(gpus) < min_devices:
        raise CheckFailedError(
            too_few("jax", len(gpus), min_devices, f"{reason} (is jax[cuda] installed?)")
        )
    jnp = importlib.import_module("jax.numpy")
    a = jnp.asarray(flat(a_value), dtype=jnp.float32).reshape(SIZE, SIZE)
    b = jnp.asarray(flat(b_value), dtype=jnp.float32).reshape(SIZE, SIZE)
    gpu0 = gpus[0]
    product = jnp.matmul(jax.device_put(a, gpu0), jax.device_put(b, gpu0))
    product.block_until_ready()
    placed = list(product.devices())
    result["device_used"] = f"{placed[0]} ({getattr(placed[0], 'device_kind', '?')})"
    if placed[0].platform != "gpu":
        raise CheckFailedError(f"JAX computed on {placed[0]}, not on {gpu0}")
    cpu = jax.devices("cpu")[0]
    cpu_product = jnp.matmul(jax.device_put(a, cpu), jax.device_put(b, cpu))
    return jax.device_get(product), jax.device_get(cpu_product)


def run_cupy(cupy: ModuleType, result: dict[str, Any], min_devices: int) -> Products:
    """CuPy: cupy.cuda.runtime.getDeviceCount(), then a product on device 0 vs NumPy."""
    runtime = cupy.cuda.runtime
    try:
        count = int(runtime.getDeviceCount())
        reason = f"cupy.cuda.runtime.getDeviceCount() returned {count}"
    except Exception as error:  # noqa: BLE001  # CUDARuntimeError when there is no driver
        count = 0
        reason = f"cupy.cuda.runtime.getDeviceCount() raised: {error}"
    names = []
    for n in range(count):
        name = runtime.getDeviceProperties(n)["name"]
        names.append(name.decode() if isinstance(name, bytes) else str(name))
    result["devices"] = names
    try:
        result["cuda_build"] = {"cuda": cuda_version(int(runtime.runtimeGetVersion()))}
    except Exception:  # noqa: BLE001
        result["cuda_build"] = None
    if count < min_devices:
        raise CheckFailedError(too_few("cupy", count, min_devices, reason))
    numpy = importlib.import_module("numpy")
    a = numpy.asarray(flat(a_value), dtype=numpy.float32).reshape(SIZE, SIZE)
    b = numpy.asarray(flat(b_value), dtype=numpy.float32).reshape(SIZE, SIZE)
    with cupy.cuda.Device(0):
        product = cupy.matmul(cupy.asarray(a), cupy.asarray(b))
        cupy.cuda.Device(0).synchronize()
        result["device_used"] = f"cuda:{product.device.id} ({names[0]})"
        gpu_host = cupy.asnumpy(product)
    return gpu_host, numpy.matmul(a, b)


RUNNERS: dict[str, Callable[[ModuleType, dict[str, Any], int], Products]] = {
    "tensorflow": run_tensorflow,
    "torch": run_torch,
    "jax": run_jax,
    "cupy": run_cupy,
}


def prepare_environment(framework: str) -> None:
    """Quieter, lighter framework start-up, unless the caller chose otherwise."""
    if framework == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if framework == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def import_framework(framework: str) -> ModuleType:
    """Import a framework; the error names it."""
    prepare_environment(framework)
    return importlib.import_module(framework)


def choose(requested: str) -> tuple[str, ModuleType]:
    """The framework to check: the one asked for, or the first importable one for ``auto``."""
    if requested != "auto":
        try:
            return requested, import_framework(requested)
        except Exception as error:  # ImportError, or a broken install
            raise CheckFailedError(
                f"cannot import {requested}: {type(error).__name__}: {error}"
            ) from error
    errors = []
    for name in FRAMEWORKS:
        try:
            return name, import_framework(name)
        except Exception as error:  # noqa: BLE001, PERF203  # ImportError, or a broken install
            errors.append(f"{name}: {type(error).__name__}: {error}")
    raise CheckFailedError(
        "no GPU framework is importable (tried tensorflow, torch, jax, cupy): " + "; ".join(errors)
    )


def require_close(name: str, error: float) -> None:
    """Fail unless the GPU product is within the tolerance."""
    if error > TOLERANCE:
        raise CheckFailedError(
            f"{DISPLAY[name]} computed a wrong product on the GPU: max abs error {error} "
            f"> {TOLERANCE} (the exact result is integral)"
        )


def check(requested: str, min_devices: int) -> dict[str, Any]:
    """Run the whole check and return the result (``ok`` says whether it passed)."""
    result = base_result(None if requested == "auto" else requested)
    started = time.monotonic()
    try:
        name, module = choose(requested)
        result["framework"] = name
        result["framework_version"] = str(getattr(module, "__version__", "unknown"))
        gpu_host, cpu_host = RUNNERS[name](module, result, min_devices)
        error = compare(host_list(gpu_host), host_list(cpu_host))
        result["max_abs_error"] = error
        require_close(name, error)
        result["ok"] = True
        result["message"] = (
            f"{DISPLAY[name]} {result['framework_version']} sees {len(result['devices'])} GPU(s); "
            f"{CHECK} on {result['device_used']} matches the CPU and the exact result"
        )
    except CheckFailedError as error:
        result["message"] = str(error)
    except Exception as error:  # noqa: BLE001  # any framework error is a failed check
        framework = DISPLAY.get(str(result["framework"]), str(result["framework"]))
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        result["message"] = f"{framework} check raised {last}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def start_guard(framework: str | None, timeout_s: int) -> None:
    """Bound the run: a watchdog that reports, and SIGALRM as the backstop that always kills."""

    def report_and_exit() -> None:
        failure = base_result(framework)
        failure["message"] = (
            f"timed out after {timeout_s} s (a hung driver or framework initialisation?); "
            f"{driver_hint()}"
        )
        emit(failure)
        os._exit(1)

    watchdog = threading.Timer(timeout_s, report_and_exit)
    watchdog.daemon = True
    watchdog.start()
    if hasattr(signal, "SIGALRM"):
        # the default action of SIGALRM ends the process even inside a C call that never
        # returns to Python, where the watchdog thread may not get the interpreter lock
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(timeout_s + 15)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the JSON line, return the exit status."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=DESCRIPTION)
    parser.add_argument("--framework", choices=("auto", *FRAMEWORKS), default="auto")
    parser.add_argument("--min-devices", type=int, default=1, metavar="N")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    args = parser.parse_args(argv)
    start_guard(None if args.framework == "auto" else args.framework, args.timeout)
    result = check(args.framework, max(1, args.min_devices))
    emit(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
