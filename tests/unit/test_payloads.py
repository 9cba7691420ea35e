"""Tests for the in-container payloads, run here the way the smoke runner runs them.

Each payload runs as ``sys.executable -c SOURCE ARGS...`` in a subprocess. This host has no GPU
and no framework, so gpu_check is exercised on its failure branches (nothing importable, stub
frameworks that see no GPU, the time guard), and cuda_libs on fake libraries built here with
``cc``: they prove the search order and the version comparison, nothing about real CUDA. The
real proof, on an NVIDIA GPU, is in docs/gpu-proof.md.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images.smoke.payloads import PAYLOADS, source
from tests.conftest import require_tool

if TYPE_CHECKING:
    from pathlib import Path


def run_payload(
    name: str, *args: str, pythonpath: Path | None = None, timeout: float = 120
) -> tuple[int, dict[str, Any]]:
    """Run a payload as the runner does; return its exit status and its one JSON line."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", source(name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {done.stdout!r} (stderr {done.stderr!r})"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return done.returncode, result


def write_module(root: Path, name: str, text: str) -> None:
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(text), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the payloads' text
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAYLOADS)
def test_source_reads_the_payload(name: str) -> None:
    text = source(name)
    assert text == source(f"{name}.py")
    assert 'if __name__ == "__main__":' in text
    # the runner passes the text with python -c: there is no file to find
    names = {node.id for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Name)}
    assert "__file__" not in names


@pytest.mark.parametrize("name", PAYLOADS)
def test_payloads_are_python_3_8(name: str) -> None:
    ast.parse(source(name), feature_version=(3, 8))


def test_source_rejects_an_unknown_payload() -> None:
    with pytest.raises(ValueError, match="unknown payload 'nope'"):
        source("nope")


# ---------------------------------------------------------------------------------------------
# gpu_check
# ---------------------------------------------------------------------------------------------

GPU_KEYS = {
    "ok",
    "framework",
    "framework_version",
    "devices",
    "device_used",
    "check",
    "max_abs_error",
    "message",
}


def block_frameworks(root: Path) -> None:
    """Frameworks that fail to import, whatever the host has installed."""
    for name in ("tensorflow", "torch", "jax", "cupy"):
        write_module(root, name, f'raise ImportError("{name} blocked by the test")\n')


def test_gpu_check_without_any_framework_fails_clearly(tmp_path: Path) -> None:
    block_frameworks(tmp_path)
    code, result = run_payload("gpu_check", pythonpath=tmp_path)
    assert code == 1
    assert result.keys() >= GPU_KEYS
    assert result["ok"] is False
    assert result["check"] == "matmul 1024x1024"
    assert result["message"].startswith("no GPU framework is importable")
    for name in ("tensorflow", "torch", "jax", "cupy"):
        assert f"{name}: ImportError: {name} blocked by the test" in result["message"]


def test_gpu_check_names_the_framework_that_cannot_import(tmp_path: Path) -> None:
    block_frameworks(tmp_path)
    code, result = run_payload("gpu_check", "--framework", "tensorflow", pythonpath=tmp_path)
    assert code == 1
    assert result["framework"] == "tensorflow"
    assert result["message"] == (
        "cannot import tensorflow: ImportError: tensorflow blocked by the test"
    )


def test_gpu_check_tensorflow_without_gpu(tmp_path: Path) -> None:
    write_module(
        tmp_path,
        "tensorflow",
        """
        from types import SimpleNamespace

        __version__ = "2.17.0"
        config = SimpleNamespace(list_physical_devices=lambda kind: [])
        test = SimpleNamespace(is_built_with_cuda=lambda: False)
        sysconfig = SimpleNamespace(get_build_info=lambda: {})
        """,
    )
    code, result = run_payload("gpu_check", "--framework", "auto", pythonpath=tmp_path)
    assert code == 1
    assert result["framework"] == "tensorflow"
    assert result["framework_version"] == "2.17.0"
    assert result["devices"] == []
    message = result["message"]
    assert message.startswith("TensorFlow sees no GPU: tf.config.list_physical_devices('GPU')")
    assert "a CPU-only build: install tensorflow[and-cuda]" in message
    assert "CUDA_VISIBLE_DEVICES" in message


def test_gpu_check_torch_with_gpus_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(
        tmp_path,
        "torch",
        """
        from types import SimpleNamespace

        __version__ = "2.4.0+cu121"
        version = SimpleNamespace(cuda="12.1")
        backends = SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100))
        cuda = SimpleNamespace(device_count=lambda: 0)
        """,
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, result = run_payload("gpu_check", "--framework", "torch", pythonpath=tmp_path)
    assert code == 1
    assert result["cuda_build"] == {"cuda": "12.1", "cudnn": "9.1.0"}
    message = result["message"]
    assert message.startswith("PyTorch sees no GPU: torch.cuda.device_count() returned 0")
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in message


def test_gpu_check_time_guard(tmp_path: Path) -> None:
    write_module(tmp_path, "torch", "import time\ntime.sleep(60)\n")
    code, result = run_payload(
        "gpu_check", "--framework", "torch", "--timeout", "1", pythonpath=tmp_path, timeout=30
    )
    assert code == 1
    assert result["ok"] is False
    assert result["message"].startswith("timed out after 1 s")


# ---------------------------------------------------------------------------------------------
# cuda_libs, on fake libraries laid out like the NVIDIA pip wheels
# ---------------------------------------------------------------------------------------------

FAKES = {
    # (folder under nvidia/, file name): C source
    ("cuda_runtime", "libcudart.so.12"): (
        "int cudaRuntimeGetVersion(int *version) { *version = 12040; return 0; }\n"
    ),
    ("cudnn", "libcudnn.so.9"): (
        "#include <stddef.h>\nsize_t cudnnGetVersion(void) { return 90100; }\n"
    ),
    ("cudnn8", "libcudnn.so.8"): (
        "#include <stddef.h>\nsize_t cudnnGetVersion(void) { return 8902; }\n"
    ),
}


@pytest.fixture(scope="module")
def fake_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sys.path entry holding nvidia/<name>/lib/<library> built with cc."""
    cc = require_tool("cc")
    root = tmp_path_factory.mktemp("site")
    for (folder, library), code in FAKES.items():
        lib = root / "nvidia" / folder / "lib"
        lib.mkdir(parents=True)
        c_file = lib / f"{library}.c"
        c_file.write_text(code, encoding="utf-8")
        subprocess.run(
            [cc, "-shared", "-fPIC", "-o", str(lib / library), str(c_file)],
            check=True,
            capture_output=True,
        )
    return root


def test_cuda_libs_finds_and_checks_the_wheel_libraries(fake_wheels: Path) -> None:
    code, result = run_payload(
        "cuda_libs", "--cuda", "12.4", "--cudnn", "9.1", pythonpath=fake_wheels
    )
    assert code == 0, result["message"]
    assert result["ok"] is True
    cudart, cudnn = result["cudart"], result["cudnn"]
    assert cudart["version"] == "12.4"
    assert cudart["path"] == str(fake_wheels / "nvidia/cuda_runtime/lib/libcudart.so.12")
    assert cudart["found_by"] == "pip wheel"
    assert cudnn["version"] == "9.1.0"
    assert cudnn["path"] == str(fake_wheels / "nvidia/cudnn/lib/libcudnn.so.9")
    assert "CUDA runtime 12.4 loaded from" in result["message"]


def test_cuda_libs_reports_a_cuda_major_mismatch(fake_wheels: Path) -> None:
    code, result = run_payload(
        "cuda_libs", "--cuda", "11.8", "--cudnn", "9", pythonpath=fake_wheels
    )
    assert code == 1
    assert result["ok"] is False
    assert result["cudart"]["path"] is None
    assert result["cudart"]["requested"] == "11.8"
    message = result["message"]
    assert message.startswith("CUDA runtime 11.8: libcudart.so.11 could not be loaded")
    assert "other CUDA runtimes present: " in message
    assert str(fake_wheels / "nvidia/cuda_runtime/lib/libcudart.so.12") in message
    assert result["cudnn"]["version"] == "9.1.0"  # the cuDNN half still passed


def test_cuda_libs_accepts_another_cuda_minor(fake_wheels: Path) -> None:
    code, result = run_payload("cuda_libs", "--cuda", "12.2", pythonpath=fake_wheels)
    assert code == 0
    assert result["cudart"]["version"] == "12.4"
    assert result["cudnn"] is None
    assert "(12.2 requested: same major, minor differs)" in result["message"]
    assert "cuDNN not checked (no --cudnn)" in result["message"]


def test_cuda_libs_reports_a_cudnn_minor_mismatch(fake_wheels: Path) -> None:
    code, result = run_payload(
        "cuda_libs", "--cuda", "12.4", "--cudnn", "9.2", pythonpath=fake_wheels
    )
    assert code == 1
    assert result["cudart"]["version"] == "12.4"
    assert result["cudnn"]["version"] == "9.1.0"
    assert result["message"].endswith("is cuDNN 9.1.0, 9.2 requested")


def test_cuda_libs_decodes_cudnn_8_versions(fake_wheels: Path) -> None:
    code, result = run_payload(
        "cuda_libs", "--cuda", "12.4", "--cudnn", "8.9", pythonpath=fake_wheels
    )
    assert code == 0, result["message"]
    assert result["cudnn"]["version"] == "8.9.2"


def test_cuda_libs_rejects_a_malformed_version() -> None:
    done = subprocess.run(
        [sys.executable, "-c", source("cuda_libs"), "--cuda", "12"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "'12' is not a version MAJOR.MINOR" in done.stderr
