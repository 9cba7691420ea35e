"""NVIDIA_REQUIRE_CUDA: the rendered constraint and the driver preflight give the same verdict.

``require_satisfied`` follows libnvidia-container's evaluator (src/cli/dsl.c): terms separated
by spaces are alternatives, conditions separated by commas must all hold, versions compare
numerically component by component. The agreement tests ask it about the string an image gets
and compare with what the smoke tests' preflight says about the same host.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hepml_images.compat import (
    driver_cuda_version,
    driver_requirement,
    known_cuda_versions,
    nvidia_require_cuda,
    require_satisfied,
)
from hepml_images.errors import IncompatibleVersions
from hepml_images.smoke.runner import GpuHost, preflight

# NVIDIA's own nvidia/cuda:12.5.1 value (twelve brands for each of the branches 470, 535, 550)
_BRANDS: tuple[str, ...] = ("unknown", "grid", "tesla", "nvidia", "quadro", "quadrortx")
_BRANDS += ("nvidiartx", "vapps", "vpc", "vcs", "vws", "cloudgaming")
NVIDIA_12_5 = "cuda>=12.5 " + " ".join(
    f"brand={brand},driver>={branch},driver<{branch + 1}"
    for branch in (470, 535, 550)
    for brand in _BRANDS
)

BRANDS = ("tesla", "geforce", "nvidiartx", "titan", None)


def _preflight_accepts(driver: str, cuda: str) -> bool:
    host = GpuHost(gpus=("NVIDIA H100",), driver=driver, runtime=True, problem=None)
    accepted, _ = preflight(host, cuda)
    return accepted


def _runtime_accepts(driver: str, cuda: str, brand: str | None, reported: str | None) -> bool:
    return require_satisfied(nvidia_require_cuda(cuda), driver=driver, cuda=reported, brand=brand)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _reported(driver: str) -> list[str]:
    """The CUDA versions a driver may report: from what the table says it fully supports up
    to the newest CUDA of its branch (a beta of a branch already reports the branch's CUDA;
    R565 reports 12.7, a version without a toolkit). Older than the table: 10.2.
    """
    low = driver_cuda_version(driver) or "10.2"
    branch = _key(driver)[0]
    of_branch = [
        cuda
        for cuda in known_cuda_versions()
        if _key(driver_requirement(cuda).toolkit_driver)[0] <= branch
    ]
    high = max(of_branch, key=_key) if of_branch else low
    reported = [c for c in known_cuda_versions() if _key(low) <= _key(c) <= _key(high)]
    if branch == 565:  # R565 reports CUDA 12.7
        reported.append("12.7")
    return reported or [low]


def _agree(driver: str, cuda: str, brand: str | None) -> bool:
    expected = _preflight_accepts(driver, cuda)
    return all(_runtime_accepts(driver, cuda, brand, r) is expected for r in _reported(driver))


# ---------------------------------------------------------------------------------------------
# the evaluator follows libnvidia-container
# ---------------------------------------------------------------------------------------------


def test_space_separated_terms_are_alternatives() -> None:
    assert require_satisfied("cuda>=12.5 driver>=535", driver="535.104.05", cuda="12.2")
    assert not require_satisfied("cuda>=12.5 driver>=550", driver="535.104.05", cuda="12.2")
    assert require_satisfied("cuda>=12.0 driver>=999", driver="535.104.05", cuda="12.2")


def test_comma_separated_conditions_must_all_hold() -> None:
    term = "brand=tesla,driver>=535,driver<536"
    assert require_satisfied(term, driver="535.104.05", cuda="12.2", brand="tesla")
    assert require_satisfied(term, driver="535.104.05", cuda="12.2", brand="Tesla")
    assert not require_satisfied(term, driver="535.104.05", cuda="12.2", brand="geforce")
    assert not require_satisfied(term, driver="536.1", cuda="12.2", brand="tesla")


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ("driver>=535", True),  # 535.104.05 >= 535(.0.0)
        ("driver<536", True),
        ("driver=535.104.5", True),  # numeric: 05 and 5 are the same
        ("driver!=535.104.05", False),
        ("driver>535.104.05", False),
        ("driver<=535.104.05", True),
        ("driver>=535.104.6", False),
        ("driver>=535.54.03", True),  # 104 > 54 as numbers, not as text
    ],
)
def test_versions_compare_numerically(condition: str, holds: bool) -> None:
    assert require_satisfied(condition, driver="535.104.05", cuda="12.2") is holds


def test_unknown_properties_hold_and_empty_requirements_hold() -> None:
    assert require_satisfied("brand=tesla", driver="535.104.05", cuda=None, brand=None)
    assert require_satisfied("cuda>=99.0", driver="535.104.05", cuda=None)
    assert require_satisfied("", driver="535.104.05", cuda="12.2")
    assert require_satisfied("   ", driver="535.104.05", cuda="12.2")


@pytest.mark.parametrize("requirement", ["cuda", "cuda=>12.5", "vram>=80", "brand>=tesla"])
def test_invalid_conditions_are_refused(requirement: str) -> None:
    with pytest.raises(ValueError, match="invalid NVIDIA requirement condition"):
        require_satisfied(requirement, driver="535.104.05", cuda="12.2", brand="tesla")


def test_nvidia_images_let_r535_datacenter_gpus_run_cuda_12_5_but_not_geforce() -> None:
    # the case of the issue: the branch terms admit R535 on a Tesla ...
    assert require_satisfied(NVIDIA_12_5, driver="535.104.05", cuda="12.2", brand="tesla")
    # ... but not on a GeForce (NVIDIA's images rely on cuda-compat, datacenter GPUs only)
    assert not require_satisfied(NVIDIA_12_5, driver="535.104.05", cuda="12.2", brand="geforce")
    # and no branch that is not listed (R545 reports 12.3)
    assert not require_satisfied(NVIDIA_12_5, driver="545.23.08", cuda="12.3", brand="tesla")


# ---------------------------------------------------------------------------------------------
# the rendered value
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "rendered"),
    [
        # the CUDA versions of the shipped CUDA variants
        ("11.2", "cuda>=11.2 driver>=450.80.2"),
        ("11.8", "cuda>=11.8 driver>=450.80.2"),
        ("12.5", "cuda>=12.5 driver>=525.60.13"),
        # CUDA 11.0 has no lower floor than its own driver
        ("11.0", "cuda>=11.0,driver>=450.51.5"),
        ("11.0.3", "cuda>=11.0,driver>=450.51.6"),
        ("12.0", "cuda>=12.0,driver>=525.60.13"),
        ("12.3.2", "cuda>=12.3 driver>=525.60.13"),
        ("13.0", "cuda>=13.0 driver>=580"),
        ("13.3", "cuda>=13.3 driver>=580"),
    ],
)
def test_rendered_require_cuda(cuda: str, rendered: str) -> None:
    assert nvidia_require_cuda(cuda) == rendered


@pytest.mark.parametrize("cuda", ["13.4", "13.4.1", "13.4.2"])
def test_no_constraint_is_rendered_for_cuda_13_4_until_its_row_is_checked(cuda: str) -> None:
    # an image for it would otherwise carry a guessed driver floor
    with pytest.raises(IncompatibleVersions, match="not in the driver table"):
        nvidia_require_cuda(cuda)


def test_rendered_values_are_semantic_versions_for_the_go_runtime() -> None:
    # nvidia-container-toolkit's Go evaluator validates values as semver: no leading zeros
    for cuda in known_cuda_versions():
        for term in nvidia_require_cuda(cuda).split(" "):
            for condition in term.split(","):
                value = condition.split("=", 1)[1]
                assert all(part == str(int(part)) for part in value.split(".")), condition


def test_driver_cuda_version_reads_the_table() -> None:
    assert driver_cuda_version("535.104.05") == "12.2"
    assert driver_cuda_version("555.42.02") == "12.5"
    assert driver_cuda_version("580.65.06") == "13.0"
    assert driver_cuda_version("440.33") is None


# ---------------------------------------------------------------------------------------------
# the preflight and the runtime agree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "cuda", "accepted"),
    [
        ("535.104.05", "12.5", True),  # the case: minor-version compatibility
        ("535.54.03", "12.5", True),
        ("525.60.13", "12.5", True),  # exactly the 12.x floor
        ("525.60.12", "12.5", False),
        ("520.61.05", "12.5", False),  # an 11.x driver
        ("470.82.01", "12.5", False),  # forward compatibility needs cuda-compat: not ours
        ("555.42.02", "12.5", True),
        ("580.95.05", "12.5", True),  # a newer major runs older ones
        ("470.82.01", "11.2", True),
        ("450.80.02", "11.8", True),  # the 11.x floor
        ("450.80.01", "11.8", False),
        ("450.51.06", "11.8", False),
        ("450.51.05", "11.0", True),  # 11.0 has no lower floor than its own driver
        ("450.51.04", "11.0", False),
        ("450.51.05", "11.0.3", False),  # 11.0.3 wants 450.51.06, below the 11.x floor
        ("450.36.06", "11.0", False),  # the 11.0 RC driver: reports 11.0, older than the GA's
        ("525.53", "12.0", False),  # a 525 beta: reports 12.0, older than 525.60.13
        ("525.60.13", "12.0", True),
        ("575.57.08", "13.0", False),  # a 12.x driver cannot run CUDA 13
        ("580", "13.3", True),
        ("580.65.06", "13.3", True),
        ("610.43.02", "13.3.1", True),
        ("565.57.01", "12.8", True),  # R565 (reports 12.7): no toolkit of its own
    ],
)
@pytest.mark.parametrize("brand", BRANDS)
def test_preflight_and_rendered_constraint_agree(
    driver: str, cuda: str, accepted: bool, brand: str | None
) -> None:
    assert _preflight_accepts(driver, cuda) is accepted
    assert _agree(driver, cuda, brand)


def test_agree_when_the_driver_reports_a_cuda_without_toolkit() -> None:
    # R565 reports CUDA 12.7 (no 12.7 toolkit exists); the table reads it as 12.6
    for cuda in ("12.5", "12.6", "12.8", "12.9", "13.0"):
        expected = _preflight_accepts("565.57.01", cuda)
        assert _runtime_accepts("565.57.01", cuda, "geforce", "12.7") is expected


def _boundary_drivers() -> list[str]:
    """Every driver the table names, and the driver just below and just above each one."""
    named = set()
    for cuda in known_cuda_versions():
        requirement = driver_requirement(cuda)
        named.add(requirement.toolkit_driver)
        if requirement.minor_compat_driver is not None:
            named.add(requirement.minor_compat_driver)
    drivers = set()
    for driver in named:
        parts = [int(part) for part in driver.split(".")]
        drivers.add(driver)
        drivers.add(".".join(map(str, [*parts[:-1], parts[-1] + 1])))
        if parts[-1] > 0:
            drivers.add(".".join(map(str, [*parts[:-1], parts[-1] - 1])))
        else:
            drivers.add(f"{parts[0] - 1}.999.99")
    return sorted(drivers)


@pytest.mark.parametrize("cuda", [*known_cuda_versions(), "11.0.3", "12.2.2", "12.8.1", "13.3.1"])
def test_agree_at_every_boundary_of_the_table(cuda: str) -> None:
    for driver in _boundary_drivers():
        for brand in ("tesla", "geforce"):
            assert _agree(driver, cuda, brand), (driver, cuda, brand)


@given(
    st.sampled_from(known_cuda_versions()),
    st.integers(440, 620),
    st.integers(0, 130),
    st.integers(0, 20),
    st.sampled_from(BRANDS),
)
def test_agree_for_any_driver(
    cuda: str, major: int, minor: int, patch: int, brand: str | None
) -> None:
    driver = f"{major}.{minor}.{patch:02d}"
    assert _agree(driver, cuda, brand), (driver, cuda, brand)
