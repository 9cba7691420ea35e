"""Tests for hepml_images.compat: the tables hold the researched facts, the checks explain."""

from __future__ import annotations

import dataclasses
import re

import pytest
from packaging.specifiers import SpecifierSet

from hepml_images.compat import (
    DriverRequirement,
    DriverVerdict,
    TensorflowConfig,
    check_driver,
    check_tensorflow,
    distro_python,
    driver_requirement,
    known_cuda_versions,
    known_tensorflow_versions,
    tensorflow_config,
)
from hepml_images.errors import HepmlError, IncompatibleVersions

# ---------------------------------------------------------------------------------------------
# TensorFlow table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tf", "python", "cuda", "cudnn"),
    [
        ("2.6", ">=3.6,<3.10", "11.2", "8.1"),
        ("2.7", ">=3.7,<3.10", "11.2", "8.1"),
        ("2.11", ">=3.7,<3.11", "11.2", "8.1"),
        ("2.12", ">=3.8,<3.12", "11.8", "8.6"),
        ("2.14", ">=3.9,<3.12", "11.8", "8.7"),
        ("2.15", ">=3.9,<3.12", "12.2", "8.9"),
        ("2.16", ">=3.9,<3.13", "12.3", "8.9"),
        ("2.17", ">=3.9,<3.13", "12.3", "8.9"),
        ("2.18", ">=3.9,<3.13", "12.5", "9.3"),
        ("2.20", ">=3.9,<3.14", "12.5", "9.3"),
        ("2.21", ">=3.10,<3.14", "12.5", "9.3"),
    ],
)
def test_tensorflow_table_rows(tf: str, python: str, cuda: str, cudnn: str) -> None:
    config = tensorflow_config(tf)
    assert config.tensorflow == tf
    assert config.python == SpecifierSet(python)
    assert config.cuda == cuda
    assert config.cudnn == cudnn
    assert config.cpu_package == "tensorflow-cpu"


def test_tensorflow_2_17_wants_cuda_12_3_and_cudnn_8_9() -> None:
    assert tensorflow_config("2.17") == TensorflowConfig(
        tensorflow="2.17",
        python=SpecifierSet(">=3.9,<3.13"),
        cuda="12.3",
        cudnn="8.9",
        and_cuda_extra=True,
        cpu_package="tensorflow-cpu",
        patches=(0, 1),
    )


@pytest.mark.parametrize(
    ("tf", "has_extra"),
    [("2.6", False), ("2.13", False), ("2.14", True), ("2.15", True), ("2.21", True)],
)
def test_and_cuda_extra_exists_from_2_14(tf: str, has_extra: bool) -> None:
    assert tensorflow_config(tf).and_cuda_extra is has_extra


def test_known_tensorflow_versions_are_every_minor_from_2_6_sorted_numerically() -> None:
    versions = known_tensorflow_versions()
    assert versions == tuple(f"2.{minor}" for minor in range(6, 22))
    assert versions.index("2.9") < versions.index("2.10")


@pytest.mark.parametrize("spelling", ["2.17", "2.17.0", "2.17.1", " 2.17.1 "])
def test_tensorflow_config_accepts_patch_releases(spelling: str) -> None:
    assert tensorflow_config(spelling).tensorflow == "2.17"


def test_tensorflow_config_accepts_post_releases() -> None:
    assert tensorflow_config("2.15.0.post1").cuda == "12.2"


@pytest.mark.parametrize("version", ["2.5", "1.15.5"])
def test_unknown_tensorflow_names_the_known_versions(version: str) -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        tensorflow_config(version)
    assert version in caught.value.message
    assert caught.value.hint is not None
    assert "2.6" in caught.value.hint
    assert "2.21" in caught.value.hint


@pytest.mark.parametrize("version", ["2.22", "2.22.0", "3.0"])
def test_tensorflow_newer_than_the_table_says_how_to_proceed(version: str) -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        tensorflow_config(version)
    error = caught.value
    assert error.message == (
        f"TensorFlow {version} is newer than the compatibility table, which knows "
        "TensorFlow 2.6\u20132.21"
    )
    assert error.hint is not None
    assert error.hint.startswith("use TensorFlow 2.21 (the newest the table knows), or add a ")
    assert "_TENSORFLOW in hepml_images/compat.py" in error.hint
    assert "https://www.tensorflow.org/install/source" in error.hint


def test_tensorflow_2_16_0_was_never_released() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        tensorflow_config("2.16.0")
    error = caught.value
    assert error.message == "TensorFlow 2.16.0 was never released: the 2.16 series starts at 2.16.1"
    assert (
        error.hint
        == "released 2.16 versions: 2.16.1, 2.16.2; or write '2.16' for the newest 2.16.x"
    )


@pytest.mark.parametrize(
    ("version", "row"),
    [
        ("2.16", "2.16"),
        ("2.16.1", "2.16"),
        ("2.16.2", "2.16"),
        ("2.16.3", "2.16"),
        ("2.21.1", "2.21"),
    ],
)
def test_released_or_possibly_newer_patches_are_accepted(version: str, row: str) -> None:
    # a patch above the newest one listed may have come out since the table was checked
    assert tensorflow_config(version).tensorflow == row


def test_every_row_lists_its_published_patch_releases() -> None:
    for version in known_tensorflow_versions():
        row = tensorflow_config(version)
        assert row.patches, version
        assert list(row.patches) == sorted(set(row.patches))
        for patch in row.patches:
            assert tensorflow_config(f"{version}.{patch}") is row
    assert tensorflow_config("2.16").patches == (1, 2)
    assert tensorflow_config("2.6").patches == (0, 1, 2, 3, 4, 5)


def test_every_tested_cuda_is_in_the_driver_table() -> None:
    for version in known_tensorflow_versions():
        assert tensorflow_config(version).cuda in known_cuda_versions()


@pytest.mark.parametrize("version", ["2", "two", ""])
def test_malformed_tensorflow_version_is_a_clear_error(version: str) -> None:
    with pytest.raises(IncompatibleVersions, match="TensorFlow version"):
        tensorflow_config(version)


def test_incompatible_versions_is_a_user_error_with_exit_code_2() -> None:
    with pytest.raises(HepmlError) as caught:
        tensorflow_config("9.9")
    assert isinstance(caught.value, IncompatibleVersions)
    assert caught.value.exit_code == 2


def test_configs_are_immutable() -> None:
    config = tensorflow_config("2.17")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cuda = "12.5"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# check_tensorflow
# ---------------------------------------------------------------------------------------------


def test_python_3_13_is_rejected_for_tensorflow_2_17_naming_both_sides() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        check_tensorflow("2.17", "3.13")
    error = caught.value
    assert error.message == "TensorFlow 2.17 is not tested with Python 3.13 (tested: 3.9\u20133.12)"
    assert error.hint is not None
    assert "TensorFlow versions tested with Python 3.13: 2.20, 2.21" in error.hint


def test_python_patch_release_is_compared_on_major_minor() -> None:
    with pytest.raises(IncompatibleVersions, match=r"Python 3\.13 \(tested"):
        check_tensorflow("2.17.1", "3.13.1")
    assert check_tensorflow("2.17.1", "3.12.7").tensorflow == "2.17"


@pytest.mark.parametrize(("python", "accepted"), [("3.8", False), ("3.9", True), ("3.12", True)])
def test_python_range_boundaries(python: str, accepted: bool) -> None:
    if accepted:
        assert check_tensorflow("2.17", python).tensorflow == "2.17"
    else:
        with pytest.raises(IncompatibleVersions, match=r"tested: 3\.9"):
            check_tensorflow("2.17", python)


def test_tensorflow_2_21_dropped_python_3_9() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        check_tensorflow("2.21", "3.9")
    assert "(tested: 3.10\u20133.13)" in caught.value.message
    assert caught.value.hint is not None
    assert "2.20" in caught.value.hint
    assert "2.21" not in caught.value.hint.split(";")[0]


def test_python_no_tensorflow_supports_says_so() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        check_tensorflow("2.17", "3.5")
    assert caught.value.hint is not None
    assert "no TensorFlow version in the table is tested with Python 3.5" in caught.value.hint


def test_full_matching_stack_passes() -> None:
    config = check_tensorflow("2.17", "3.11", cuda="12.3.2", cudnn="8.9.7")
    assert config == tensorflow_config("2.17")


def test_cuda_mismatch_names_both_and_suggests() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        check_tensorflow("2.17", "3.11", cuda="12.5")
    error = caught.value
    assert error.message == "TensorFlow 2.17 is not tested with CUDA 12.5 (tested: CUDA 12.3)"
    assert error.hint is not None
    assert "TensorFlow 2.17 wants CUDA 12.3 with cuDNN 8.9" in error.hint
    assert "TensorFlow versions tested with CUDA 12.5: 2.18, 2.19, 2.20, 2.21" in error.hint


def test_cuda_is_compared_on_major_minor_only() -> None:
    assert check_tensorflow("2.18", "3.12", cuda="12.5.1").cuda == "12.5"
    with pytest.raises(IncompatibleVersions, match=r"CUDA 12\.4"):
        check_tensorflow("2.18", "3.12", cuda="12.4.1")


def test_cudnn_major_must_match() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        check_tensorflow("2.17", "3.11", cuda="12.3", cudnn="9.3")
    error = caught.value
    assert error.message == "TensorFlow 2.17 is not tested with cuDNN 9.3 (tested: cuDNN 8.9)"
    assert error.hint is not None
    assert "cuDNN 8.9 or a later 8.x release" in error.hint
    assert "2.18" in error.hint


def test_cudnn_minor_must_not_be_older_than_tested() -> None:
    with pytest.raises(IncompatibleVersions, match=r"cuDNN 8\.6"):
        check_tensorflow("2.17", "3.11", cudnn="8.6")
    assert check_tensorflow("2.12", "3.11", cudnn="8.9").cudnn == "8.6"


def test_python_is_checked_before_cuda() -> None:
    with pytest.raises(IncompatibleVersions, match=r"Python 3\.13"):
        check_tensorflow("2.17", "3.13", cuda="11.8", cudnn="7.6")


def test_cuda_and_cudnn_are_optional() -> None:
    assert check_tensorflow("2.6", "3.6").cuda == "11.2"


# ---------------------------------------------------------------------------------------------
# CUDA driver table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "toolkit", "minor_compat"),
    [
        ("11.2", "460.27.03", "450.80.02"),
        ("11.8", "520.61.05", "450.80.02"),
        ("12.0", "525.60.13", None),
        ("12.2", "535.54.03", "525.60.13"),
        ("12.3", "545.23.06", "525.60.13"),
        ("12.5", "555.42.02", "525.60.13"),
        ("12.8", "570.26", "525.60.13"),
        ("12.9", "575.51.03", "525.60.13"),
        ("13.0", "580.65.06", "580"),
        ("13.2", "595.45.04", "580"),
        ("13.3", "610.43.02", "580"),
    ],
)
def test_driver_requirement_for_ga_releases(
    cuda: str, toolkit: str, minor_compat: str | None
) -> None:
    assert driver_requirement(cuda) == DriverRequirement(cuda, toolkit, minor_compat)


@pytest.mark.parametrize(
    ("cuda", "toolkit"),
    [
        ("12.3.0", "545.23.06"),
        ("12.3.1", "545.23.08"),
        ("12.3.2", "545.23.08"),
        ("12.2.2", "535.104.05"),
        ("12.4.1", "550.54.15"),
        ("12.6.3", "560.35.05"),
        ("12.8.1", "570.124.06"),
        ("13.0.2", "580.95.05"),
        ("11.4.4", "470.82.01"),
        ("13.3.1", "610.43.02"),
    ],
)
def test_driver_requirement_for_update_releases(cuda: str, toolkit: str) -> None:
    requirement = driver_requirement(cuda)
    assert requirement.cuda == cuda
    assert requirement.toolkit_driver == toolkit


def test_cuda_11_0_has_no_lower_minor_compat_floor() -> None:
    requirement = driver_requirement("11.0")
    assert requirement.toolkit_driver == "450.51.05"
    assert requirement.minor_compat_driver is None


@pytest.mark.parametrize("cuda", ["12.7", "10.2", "14.0", "12.7.1"])
def test_unknown_cuda_names_the_known_versions(cuda: str) -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        driver_requirement(cuda)
    assert f"CUDA {cuda}" in caught.value.message
    assert caught.value.hint is not None
    assert "12.6, 12.8" in caught.value.hint


@pytest.mark.parametrize("cuda", ["12", "12.3.2.1", "twelve"])
def test_malformed_cuda_version_is_a_clear_error(cuda: str) -> None:
    with pytest.raises(IncompatibleVersions, match="CUDA version"):
        driver_requirement(cuda)


def test_known_cuda_versions() -> None:
    versions = known_cuda_versions()
    assert versions[0] == "11.0"
    assert versions[-1] == "13.3"
    assert "13.4" not in versions  # not checked against NVIDIA's table yet
    assert "12.7" not in versions
    assert list(versions) == sorted(versions, key=lambda v: tuple(map(int, v.split("."))))
    assert {"11.8", "12.3", "12.9", "13.0"} <= set(versions)


# CUDA 13.4 has no row until its minimum driver is read in NVIDIA's table (its GA is 13.4.1,
# its Update 1 13.4.2, and 13.4.0 was a developer preview). Until then every spelling of it is
# refused rather than given a guessed driver: this test goes when the rows come.
@pytest.mark.parametrize("cuda", ["13.4", "13.4.0", "13.4.1", "13.4.2"])
def test_cuda_13_4_is_refused_until_its_row_is_checked(cuda: str) -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        driver_requirement(cuda)
    assert caught.value.message == f"CUDA {cuda} is not in the driver table"
    assert caught.value.hint is not None
    assert caught.value.hint.endswith("13.2, 13.3")
    with pytest.raises(IncompatibleVersions, match=rf"CUDA {re.escape(cuda)} "):
        check_driver("610.43.02", cuda)


# ---------------------------------------------------------------------------------------------
# check_driver
# ---------------------------------------------------------------------------------------------


def test_driver_too_old_message_names_both_and_suggests_a_cuda() -> None:
    result = check_driver("520.61.05", "12.3")
    assert result.verdict is DriverVerdict.TOO_OLD
    assert result.message == (
        "driver 520.61.05 is too old for CUDA 12.3: it needs >= 545.23.06 "
        "(or >= 525.60.13 with minor-version compatibility); update the host NVIDIA driver "
        "or use an image built for CUDA 11.8"
    )


@pytest.mark.parametrize(
    ("driver", "verdict"),
    [
        ("545.23.06", DriverVerdict.OK),  # exactly the toolkit driver
        ("550.54.14", DriverVerdict.OK),
        ("545.23.05", DriverVerdict.MINOR_COMPAT),  # just below it
        ("535.104.05", DriverVerdict.MINOR_COMPAT),
        ("525.60.13", DriverVerdict.MINOR_COMPAT),  # exactly the minor-compat floor
        ("525.60.12", DriverVerdict.TOO_OLD),  # just below that
        ("470.82.01", DriverVerdict.TOO_OLD),
    ],
)
def test_driver_verdict_boundaries_for_cuda_12_3(driver: str, verdict: DriverVerdict) -> None:
    assert check_driver(driver, "12.3").verdict is verdict


def test_driver_components_compare_as_numbers_not_strings() -> None:
    # As strings "535.104.05" < "535.54.03"; as numbers it is the newer driver.
    assert check_driver("535.104.05", "12.2").verdict is DriverVerdict.OK
    assert check_driver("535.54.02", "12.2").verdict is DriverVerdict.MINOR_COMPAT
    # Two-component drivers are padded: 570.26 == 570.26.0 meets CUDA 12.8 GA exactly.
    assert check_driver("570.26", "12.8").verdict is DriverVerdict.OK
    assert check_driver("570.124.05", "12.8.1").verdict is DriverVerdict.MINOR_COMPAT


def test_update_release_needs_the_update_driver() -> None:
    assert check_driver("545.23.06", "12.3").verdict is DriverVerdict.OK
    result = check_driver("545.23.06", "12.3.2")
    assert result.verdict is DriverVerdict.MINOR_COMPAT
    assert "545.23.08" in result.message
    assert "CUDA 12.3.2" in result.message


def test_minor_compat_message_names_the_full_requirement() -> None:
    result = check_driver("535.104.05", "12.3")
    assert result.message.startswith(
        "driver 535.104.05 runs CUDA 12.3 only through minor-version compatibility"
    )
    assert ">= 545.23.06" in result.message


def test_ok_message_names_driver_cuda_and_requirement() -> None:
    assert check_driver("550.54.15", "12.4.1").message == (
        "driver 550.54.15 supports CUDA 12.4.1 (it needs >= 550.54.15)"
    )


def test_too_old_suggests_the_newest_cuda_the_driver_fully_supports() -> None:
    result = check_driver("535.104.05", "13.0")
    assert result.verdict is DriverVerdict.TOO_OLD
    assert "(or >= 580 with minor-version compatibility)" in result.message
    assert result.message.endswith("use an image built for CUDA 12.2")


def test_too_old_for_everything_says_no_release_supports_it() -> None:
    result = check_driver("440.33", "11.8")
    assert result.verdict is DriverVerdict.TOO_OLD
    assert result.message.endswith(
        "update the host NVIDIA driver (no CUDA release in the table supports it)"
    )


def test_cuda_13_runs_on_any_580_driver_via_minor_compat() -> None:
    assert check_driver("580.65.06", "13.2").verdict is DriverVerdict.MINOR_COMPAT
    assert check_driver("575.57.08", "13.0").verdict is DriverVerdict.TOO_OLD
    assert check_driver("595.45.04", "13.2").verdict is DriverVerdict.OK


def test_too_old_without_minor_compat_floor_omits_it() -> None:
    result = check_driver("450.51.05", "11.0.3")
    assert result.verdict is DriverVerdict.TOO_OLD
    assert "minor-version" not in result.message
    assert "needs >= 450.51.06" in result.message


@pytest.mark.parametrize("driver", ["", "535.x.05", "535.104.05.1", "r535", "535."])
def test_malformed_driver_is_a_clear_error(driver: str) -> None:
    with pytest.raises(IncompatibleVersions, match="NVIDIA driver version"):
        check_driver(driver, "12.3")


def test_bare_driver_branch_is_read_as_its_lowest_release() -> None:
    assert check_driver("535", "12.2").verdict is DriverVerdict.MINOR_COMPAT
    assert check_driver("580", "13.0").verdict is DriverVerdict.MINOR_COMPAT


def test_check_driver_rejects_unknown_cuda() -> None:
    with pytest.raises(IncompatibleVersions, match=r"CUDA 12\.7"):
        check_driver("570.26", "12.7")


# ---------------------------------------------------------------------------------------------
# distro_python
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "release", "pythons"),
    [
        ("debian", "bullseye", ("3.9",)),
        ("debian", "11", ("3.9",)),
        ("debian", "bookworm", ("3.11",)),
        ("debian", "12", ("3.11",)),
        ("debian", "trixie", ("3.13",)),
        ("ubuntu", "focal", ("3.8",)),
        ("ubuntu", "20.04", ("3.8",)),
        ("ubuntu", "jammy", ("3.10",)),
        ("ubuntu", "noble", ("3.12",)),
        ("ubuntu", "24.04", ("3.12",)),
        ("el7", "7", ("3.6",)),
        ("el9", "9", ("3.9", "3.11", "3.12")),
    ],
)
def test_distro_python(family: str, release: str, pythons: tuple[str, ...]) -> None:
    assert distro_python(family, release) == pythons


@pytest.mark.parametrize(
    ("release", "pythons"),
    [
        ("9.0", ("3.9",)),
        ("9.1", ("3.9",)),
        ("9.2", ("3.9", "3.11")),
        ("9.3", ("3.9", "3.11")),
        ("9.4", ("3.9", "3.11", "3.12")),
        ("9.6", ("3.9", "3.11", "3.12")),
    ],
)
def test_el9_point_releases_only_have_pythons_added_by_then(
    release: str, pythons: tuple[str, ...]
) -> None:
    assert distro_python("el9", release) == pythons


def test_el7_before_7_7_has_no_python3() -> None:
    assert distro_python("el7", "7.6") == ()
    assert distro_python("el7", "7.9") == ("3.6",)


def test_distro_names_are_case_insensitive() -> None:
    assert distro_python("Ubuntu", "Noble") == ("3.12",)


def test_unknown_release_names_the_known_releases_of_that_family() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        distro_python("debian", "buster")
    assert caught.value.message == "unknown debian release 'buster'"
    assert caught.value.hint is not None
    assert "bookworm" in caught.value.hint
    assert "noble" not in caught.value.hint


@pytest.mark.parametrize(("family", "release"), [("el9", "8.4"), ("el7", "9")])
def test_release_of_another_el_major_is_unknown(family: str, release: str) -> None:
    with pytest.raises(IncompatibleVersions, match=f"unknown {family} release"):
        distro_python(family, release)


def test_unknown_family_names_the_known_families() -> None:
    with pytest.raises(IncompatibleVersions) as caught:
        distro_python("arch", "rolling")
    assert caught.value.hint == "known families: debian, el7, el9, ubuntu"
