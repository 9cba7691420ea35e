"""Which checks an image gets: derived from its resolved components. Pure.

Every check is a command run in a throwaway container from the image; it passes when the
command exits 0. Commands embed expected values only after they passed the spec validators
(versions are digits and dots), and as Python literals (``repr``) or single shell words.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hepml_images.resolve import lineage
from hepml_images.smoke.payloads import source

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant


@dataclass(frozen=True, kw_only=True)
class Check:
    """One command and what it proves."""

    name: str
    component: str
    argv: tuple[str, ...]
    gpu: bool = False
    timeout_s: int = 300


def _py(code: str, *args: str) -> tuple[str, ...]:
    return ("python", "-c", code, *args)


def _pip_names(variant: ResolvedVariant) -> set[str]:
    """Projects any pip component of the chain asked for (inline requirements and lock files)."""
    names: set[str] = set()
    for member in lineage(variant):
        pip = member.content.components.pip
        if pip is None:
            continue
        lines = list(pip.requirements)
        if pip.file_content is not None:
            lines += pip.file_content.decode(errors="replace").splitlines()
        for line in lines:
            text = line.split("#", 1)[0].split(" \\", 1)[0].strip()
            if not text or text.startswith("-"):
                continue
            try:
                names.add(canonicalize_name(Requirement(text.split(";", 1)[0]).name))
            except ValueError:
                continue
    return names


def _python_version(expected: str) -> Check:
    code = (
        "import sys\n"
        "have = '%d.%d' % sys.version_info[:2]\n"
        f"want = {expected!r}\n"
        "print(sys.executable, sys.version.split()[0])\n"
        "sys.exit(0 if have == want else f'Python {have}, expected {want}')\n"
    )
    return Check(name=f"Python is {expected}", component="python", argv=_py(code))


def _hdf5_tools(expected: str) -> Check:
    pattern = re.escape(expected) + r"(\.|$)"
    script = (
        'out="$(h5dump --version)" || exit 1; echo "$out"; '
        'v="$(printf %s "$out" | sed -n \'s/.*Version \\([0-9.]*\\).*/\\1/p\')"; '
        f"printf %s \"$v\" | grep -Eq '^{pattern}' "
        f'|| {{ echo "h5dump reports HDF5 $v, expected {expected}" >&2; exit 1; }}'
    )
    return Check(name=f"HDF5 tools report {expected}", component="hdf5", argv=("sh", "-c", script))


def _h5py(expected: str) -> Check:
    code = (
        "import sys, h5py\n"
        "have = h5py.version.hdf5_version\n"
        f"want = {expected!r}\n"
        "print('h5py', h5py.__version__, 'HDF5', have)\n"
        "ok = have == want or have.startswith(want + '.')\n"
        "sys.exit(0 if ok else f'h5py is built on HDF5 {have}, expected {want}'"
        " ' (a wheel with its own HDF5? build it from source: pip build-from-source: [h5py])')\n"
    )
    return Check(name=f"h5py uses HDF5 {expected}", component="hdf5", argv=_py(code))


def _tensorflow(expected: str, *, cuda: bool) -> Check:
    code = (
        "import sys\n"
        "import tensorflow as tf\n"
        f"want = {expected!r}\n"
        "print('TensorFlow', tf.__version__)\n"
        "if tf.__version__ != want:\n"
        "    sys.exit(f'TensorFlow {tf.__version__}, expected {want}')\n"
        "with tf.device('/CPU:0'):\n"
        "    a = tf.reshape(tf.range(1, 65, dtype=tf.float64), (8, 8))\n"
        "    got = float(tf.reduce_sum(tf.linalg.matmul(a, a, transpose_b=True)))\n"
        "m = [[i * 8 + k + 1 for k in range(8)] for i in range(8)]\n"
        "want_sum = float(sum(sum(x * y for x, y in zip(r, s)) for r in m for s in m))\n"
        "print('sum(A @ A.T) =', got, 'expected', want_sum)\n"
        "if abs(got - want_sum) > 1e-6 * want_sum:\n"
        "    sys.exit(f'TensorFlow computed {got}, expected {want_sum}')\n"
        + (
            "if not tf.test.is_built_with_cuda():\n"
            "    sys.exit('this TensorFlow is not built with CUDA')\n"
            if cuda
            else ""
        )
    )
    return Check(
        name=f"TensorFlow {expected} imports and computes", component="tensorflow", argv=_py(code)
    )


def _imports(module: str, component: str) -> Check:
    code = (
        f"import importlib\nm = importlib.import_module({module!r})\n"
        "print(m.__name__, getattr(m, '__version__', '?'))\n"
    )
    return Check(name=f"{module} imports", component=component, argv=_py(code))


def _analysisbase(release: str, setup: str) -> Check:
    quoted = shlex.quote(setup)
    script = (
        f"source {quoted} >/dev/null 2>&1 || {{ echo sourcing {quoted} failed >&2; exit 1; }}; "
        "root --version"
    )
    return Check(
        name=f"AnalysisBase {release} sets up (root --version)",
        component="analysisbase",
        argv=("bash", "-c", script),
    )


def _cuda_libs(cuda: str, cudnn: str | None) -> Check:
    args = ["--cuda", cuda] + (["--cudnn", cudnn] if cudnn else [])
    return Check(
        name=f"CUDA {cuda} runtime" + (f" and cuDNN {cudnn}" if cudnn else "") + " load",
        component="cuda",
        argv=_py(source("cuda_libs"), *args),
    )


def component_checks(variant: ResolvedVariant) -> list[Check]:
    """The automatic checks for everything the variant's chain installed."""
    versions = variant.version_map
    comps = [m.content.components for m in lineage(variant)]
    pip_names = _pip_names(variant)
    checks: list[Check] = []
    python = any(c.python is not None for c in comps)
    if python and "python" in versions:
        checks.append(_python_version(versions["python"]))
    hdf5 = next((c.hdf5 for c in reversed(comps) if c.hdf5 is not None), None)
    if hdf5 is not None and hdf5.version:
        checks.append(_hdf5_tools(hdf5.version))
        system_h5py = any(
            c.system_packages is not None and "python3-h5py" in c.system_packages.packages
            for c in comps
        )
        if python and ("h5py" in pip_names or system_h5py):
            checks.append(_h5py(hdf5.version))
    tensorflow = next((c.tensorflow for c in reversed(comps) if c.tensorflow is not None), None)
    cuda_accel = tensorflow is not None and tensorflow.accelerator == "cuda"
    if tensorflow is not None:
        checks.append(_tensorflow(versions.get("tensorflow", tensorflow.version), cuda=cuda_accel))
    checks.extend(_imports(name, "pip") for name in ("uproot", "awkward") if name in pip_names)
    analysisbase = next((c.analysisbase for c in comps if c.analysisbase is not None), None)
    if analysisbase is not None:
        checks.append(_analysisbase(analysisbase.release, analysisbase.setup))
    has_cuda = cuda_accel or any(c.cuda is not None for c in comps)
    if has_cuda and "cuda" in versions:
        checks.append(_cuda_libs(versions["cuda"], versions.get("cudnn")))
    return checks


def smoke_checks(variant: ResolvedVariant) -> list[Check]:
    """The spec's own smoke commands (its parents' included), run with ``sh -c``."""
    return [
        Check(name=test.name, component="smoke", argv=("sh", "-c", test.run))
        for test in variant.plan.tests
    ]


def gpu_checks(variant: ResolvedVariant) -> list[Check]:
    """Checks that need the NVIDIA runtime: the GPU is visible and computes."""
    comps = [m.content.components for m in lineage(variant)]
    framework = "tensorflow" if any(c.tensorflow is not None for c in comps) else "auto"
    return [
        Check(
            name="nvidia-smi lists a GPU",
            component="gpu",
            argv=("nvidia-smi", "-L"),
            gpu=True,
        ),
        Check(
            name=f"{framework} sees the GPU and computes on it",
            component="gpu",
            argv=_py(source("gpu_check"), "--framework", framework),
            gpu=True,
        ),
    ]


def wants_gpu(variant: ResolvedVariant) -> bool:
    """Whether the variant is meant for a GPU: ``gpu.check: required``, or ``auto`` with CUDA."""
    if variant.content.gpu == "required":
        return True
    return variant.content.gpu == "auto" and cuda_version(variant) is not None


def cuda_version(variant: ResolvedVariant) -> str | None:
    """The CUDA version the image was built for, for the driver preflight."""
    return variant.version_map.get("cuda")
