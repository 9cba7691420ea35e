"""Which checks each shipped variant gets, the GPU preflight, and the JUnit report."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

from hepml_images.pipeline import resolve_directory
from hepml_images.smoke import checks
from hepml_images.smoke.runner import CheckResult, GpuHost, Status, preflight
from hepml_images.smoke.session import ImageReport, junit_xml
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant


@pytest.fixture(scope="module")
def variants() -> dict[str, ResolvedVariant]:
    return {v.key: v for v in resolve_directory(shipped_dir()).variants}


def names(variant: ResolvedVariant) -> list[str]:
    return [c.name for c in checks.component_checks(variant)]


def test_tensorflow_cpu_gets_every_component_check(variants: dict[str, ResolvedVariant]) -> None:
    assert names(variants["debian-tensorflow:cpu"]) == [
        "Python is 3.11",
        "HDF5 tools report 1.10",
        "h5py uses HDF5 1.10",
        "TensorFlow 2.21.0 imports and computes",
        "uproot imports",
        "awkward imports",
    ]


def test_cuda_variants_check_the_libraries_and_want_a_gpu(
    variants: dict[str, ResolvedVariant],
) -> None:
    cuda = variants["debian-tensorflow:cuda"]
    labels = dict(cuda.plan.labels)  # what the lock installs (see test_lockfile)
    cuda_version, cudnn = labels["io.hepml.version.cuda"], labels["io.hepml.version.cudnn"]
    assert f"CUDA {cuda_version} runtime and cuDNN {cudnn} load" in names(cuda)
    assert checks.wants_gpu(cuda)
    assert not checks.wants_gpu(variants["debian-tensorflow:cpu"])
    assert not checks.wants_gpu(variants["debian-hdf5:default"])
    gpu = checks.gpu_checks(cuda)
    assert all(c.gpu for c in gpu)
    assert gpu[1].argv[:2] == ("python", "-c")
    assert gpu[1].argv[-2:] == ("--framework", "tensorflow")


def test_analysisbase_sets_up_the_release(variants: dict[str, ResolvedVariant]) -> None:
    ab = next(v for k, v in variants.items() if k.startswith("analysisbase:"))
    (check,) = [c for c in checks.component_checks(ab) if c.component == "analysisbase"]
    assert check.argv[0] == "bash"
    assert check.argv[2].startswith("source /home/atlas/release_setup.sh ")
    assert check.argv[2].endswith("root --version")


def test_smoke_commands_include_the_parents(variants: dict[str, ResolvedVariant]) -> None:
    smoke = checks.smoke_checks(variants["debian-tensorflow:cpu"])
    assert [c.name for c in smoke] == [
        "debian 12",
        "h5dump runs",
        "python stack imports",
        "tensorflow computes",
    ]
    assert all(c.argv[:2] == ("sh", "-c") for c in smoke)


@pytest.mark.parametrize(("want", "have", "ok"), [("3.11", "3.11", True), ("3.12", "3.11", False)])
def test_python_version_check_really_compares(want: str, have: str, ok: bool) -> None:
    """Run the generated check with this interpreter, pretending it is ``have``."""
    check = checks._python_version(want)
    code = check.argv[2].replace("'%d.%d' % sys.version_info[:2]", repr(have))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (done.returncode == 0) is ok
    if not ok:
        assert f"Python {have}, expected {want}" in done.stderr


def test_preflight_refuses_an_old_driver() -> None:
    host = GpuHost(gpus=("A100",), driver="470.57.02", runtime=True, problem=None)
    ok, message = preflight(host, "12.5")
    assert not ok
    assert "too old for CUDA 12.5" in message
    ok, message = preflight(
        GpuHost(gpus=("H100",), driver="580.159.04", runtime=True, problem=None), "12.5"
    )
    assert ok, message


def test_junit_report(variants: dict[str, ResolvedVariant]) -> None:
    variant = variants["debian-hdf5:default"]
    check_ok, check_bad = checks.smoke_checks(variant)[:1] * 2
    report = ImageReport(
        variant=variant,
        image_id="sha256:" + "ab" * 32,
        results=[
            CheckResult(check=check_ok, status=Status.PASSED, seconds=0.5, message="", output="x"),
            CheckResult(
                check=check_bad, status=Status.FAILED, seconds=1.0, message="exit 1", output="boom"
            ),
        ],
    )
    assert not report.passed
    root = ET.fromstring(junit_xml([report]))  # noqa: S314 - our own output
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2"
    assert suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "exit 1"
    assert failure.text == "boom"
