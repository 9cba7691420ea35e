"""Version compatibility tables and the checks built on them.

This module is pure data plus checks: it reads no files, asks no network and keeps no mutable
state. Every table is an immutable module-level tuple of frozen dataclasses, and every check
raises :class:`~hepml_images.errors.IncompatibleVersions` (never ``KeyError``) with a message
that names both sides of a conflict and a hint that lists choices that do work.

Sources the tables were taken from (re-check them when a new release appears):

* TensorFlow: the "Tested build configurations" table, Linux GPU section, of
  https://www.tensorflow.org/install/source (TF 2.6 to 2.21). The ``and-cuda`` extra and the
  ``tensorflow-cpu`` wheel were checked against the package metadata that PyPI serves.
* CUDA drivers: the NVIDIA CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding
  Driver Versions" (Linux x86_64 column) and the minor-version-compatibility table, see
  https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ and
  https://docs.nvidia.com/deploy/cuda-compatibility/.
* Distribution Pythons: packages.debian.org and packages.ubuntu.com (package ``python3``), and
  Red Hat's "Installing and using dynamic programming languages" guide for RHEL 9.
* ``NVIDIA_REQUIRE_CUDA``: libnvidia-container's evaluator (``src/cli/dsl.c``, rules in
  ``src/cli/configure.c``), the NVIDIA Container Toolkit's Go one (``internal/requirements``)
  and the values NVIDIA's CUDA images set (gitlab.com/nvidia/container-images/cuda), read
  2026-12-02; see the section below.

TensorFlow patch releases and the CUDA 13.3 rows were checked on 2026-12-02 (see each table).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from hepml_images.errors import IncompatibleVersions

__all__ = [
    "DriverCheck",
    "DriverRequirement",
    "DriverVerdict",
    "TensorflowConfig",
    "check_driver",
    "check_tensorflow",
    "distro_python",
    "driver_cuda_version",
    "driver_requirement",
    "known_cuda_versions",
    "known_tensorflow_versions",
    "nvidia_require_cuda",
    "require_satisfied",
    "tensorflow_config",
]

_EN_DASH = "\u2013"
_MAJOR_MINOR = 2
_MAJOR_MINOR_PATCH = 3


# --------------------------------------------------------------------------------------------
# Version string helpers
# --------------------------------------------------------------------------------------------


_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("TensorFlow", "2.17 or 2.17.1"),
    ("Python", "3.11 or 3.11.7"),
    ("CUDA", "12.3 or 12.3.2"),
    ("cuDNN", "8.9 or 8.9.7"),
)


def _example(what: str) -> str:
    return next((example for name, example in _EXAMPLES if name == what), "1.2 or 1.2.3")


def _release(text: str, what: str, *, longest: int | None = None) -> tuple[int, ...]:
    """Return the numeric release of ``text`` (``"12.3.2"`` -> ``(12, 3, 2)``).

    It must have at least major and minor, and at most ``longest`` components when given.
    """
    try:
        release = Version(text.strip()).release
    except InvalidVersion:
        msg = f"{what} version {text!r} is not a version number"
        hint = f"write the {what} version as MAJOR.MINOR, for example {_example(what)}"
        raise IncompatibleVersions(msg, hint=hint) from None
    if len(release) < _MAJOR_MINOR or (longest is not None and len(release) > longest):
        parts = "MAJOR.MINOR[.PATCH]" if longest == _MAJOR_MINOR_PATCH else "MAJOR.MINOR"
        msg = f"{what} version {text!r} is not of the form {parts}"
        hint = f"write the {what} version as {parts}, for example {_example(what)}"
        raise IncompatibleVersions(msg, hint=hint)
    return release


def _major_minor(text: str, what: str) -> str:
    """Return ``"MAJOR.MINOR"`` of a version string such as ``"3.11.7"``."""
    release = _release(text, what)
    return f"{release[0]}.{release[1]}"


def _mm_version(text: str) -> Version:
    """Return a table key such as ``"12.3"`` as a comparable ``Version``."""
    return Version(text)


def _join(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(items)


# --------------------------------------------------------------------------------------------
# TensorFlow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorflowConfig:
    """The tested Linux GPU build configuration of one TensorFlow minor release.

    ``tensorflow`` is the ``MAJOR.MINOR`` key, ``python`` the tested interpreter range as a
    specifier (tested 3.9 to 3.12 reads ``>=3.9,<3.13``), ``cuda`` and ``cudnn`` the
    ``MAJOR.MINOR`` versions TensorFlow was built and tested with, ``and_cuda_extra`` whether
    ``tensorflow[and-cuda]`` (CUDA libraries from pip wheels) exists for the release,
    ``cpu_package`` the name of the CPU-only Linux wheel and ``patches`` the patch releases of
    the series on PyPI when the table was checked (``(1, 2)``: 2.16.1 and 2.16.2; 2.16.0 was
    never released).
    """

    tensorflow: str
    python: SpecifierSet
    cuda: str
    cudnn: str
    and_cuda_extra: bool
    cpu_package: str
    patches: tuple[int, ...]


# PyPI metadata: tensorflow 2.13.1 declares no extras, 2.14.0 and every later release
# declares "and-cuda" (2.14 pulls cu11 wheels, 2.15 onwards cu12 wheels).
_AND_CUDA_SINCE = Version("2.14")


def _tf(
    version: str, python: tuple[str, str], *, cuda: str, cudnn: str, patches: range
) -> TensorflowConfig:
    """Build one row of the table; ``python`` is the tested (first, last) interpreter."""
    first, last = python
    last_release = Version(last).release
    below = f"{last_release[0]}.{last_release[1] + 1}"
    return TensorflowConfig(
        tensorflow=version,
        python=SpecifierSet(f">={first},<{below}"),
        cuda=cuda,
        cudnn=cudnn,
        and_cuda_extra=Version(version) >= _AND_CUDA_SINCE,
        # tensorflow-cpu is on PyPI for every release 2.5 to 2.21 (checked with pip index).
        cpu_package="tensorflow-cpu",
        patches=tuple(patches),
    )


# tensorflow.org/install/source, "Tested build configurations", Linux, GPU (checked
# 2026-12-02). ``patches``: the patch releases of each series that PyPI serves for both
# tensorflow and tensorflow-cpu (`pip index versions` with --python-version 3.6 / 3.9 / 3.11,
# checked 2026-12-02); 2.15.0.post1 is a post release of 2.15.0, and the 2.16 series starts at
# 2.16.1 (2.16.0 was never published).
_TENSORFLOW: tuple[TensorflowConfig, ...] = (
    _tf("2.6", ("3.6", "3.9"), cuda="11.2", cudnn="8.1", patches=range(6)),
    _tf("2.7", ("3.7", "3.9"), cuda="11.2", cudnn="8.1", patches=range(5)),
    _tf("2.8", ("3.7", "3.10"), cuda="11.2", cudnn="8.1", patches=range(5)),
    _tf("2.9", ("3.7", "3.10"), cuda="11.2", cudnn="8.1", patches=range(4)),
    _tf("2.10", ("3.7", "3.10"), cuda="11.2", cudnn="8.1", patches=range(2)),
    _tf("2.11", ("3.7", "3.10"), cuda="11.2", cudnn="8.1", patches=range(2)),
    _tf("2.12", ("3.8", "3.11"), cuda="11.8", cudnn="8.6", patches=range(2)),
    _tf("2.13", ("3.8", "3.11"), cuda="11.8", cudnn="8.6", patches=range(2)),
    _tf("2.14", ("3.9", "3.11"), cuda="11.8", cudnn="8.7", patches=range(2)),
    _tf("2.15", ("3.9", "3.11"), cuda="12.2", cudnn="8.9", patches=range(2)),
    _tf("2.16", ("3.9", "3.12"), cuda="12.3", cudnn="8.9", patches=range(1, 3)),
    _tf("2.17", ("3.9", "3.12"), cuda="12.3", cudnn="8.9", patches=range(2)),
    _tf("2.18", ("3.9", "3.12"), cuda="12.5", cudnn="9.3", patches=range(2)),
    _tf("2.19", ("3.9", "3.12"), cuda="12.5", cudnn="9.3", patches=range(2)),
    _tf("2.20", ("3.9", "3.13"), cuda="12.5", cudnn="9.3", patches=range(1)),
    _tf("2.21", ("3.10", "3.13"), cuda="12.5", cudnn="9.3", patches=range(1)),
)


def known_tensorflow_versions() -> tuple[str, ...]:
    """Return the TensorFlow ``MAJOR.MINOR`` versions in the table, oldest first."""
    return tuple(sorted((row.tensorflow for row in _TENSORFLOW), key=_mm_version))


def _released(row: TensorflowConfig) -> str:
    return _join([f"{row.tensorflow}.{patch}" for patch in row.patches])


def _check_patch(row: TensorflowConfig, version: str, release: tuple[int, ...]) -> None:
    """Refuse a patch release the table knows was never published.

    A patch below the first published one, or a gap between published ones, is an error; a
    patch above the newest the table lists may have come out since it was checked, so it is let
    through (pip then finds it or says that it does not exist).
    """
    if len(release) < _MAJOR_MINOR_PATCH:
        return
    patch = release[2]
    if patch in row.patches or patch > max(row.patches):
        return
    first = f"{row.tensorflow}.{row.patches[0]}"
    msg = f"TensorFlow {version} was never released"
    if patch < row.patches[0]:
        msg += f": the {row.tensorflow} series starts at {first}"
    hint = (
        f"released {row.tensorflow} versions: {_released(row)}; or write {row.tensorflow!r} "
        f"for the newest {row.tensorflow}.x"
    )
    raise IncompatibleVersions(msg, hint=hint)


def _not_in_table(version: str, key: str) -> IncompatibleVersions:
    known = known_tensorflow_versions()
    newest = Version(known[-1])
    span = f"{known[0]}{_EN_DASH}{known[-1]}"
    if Version(key) > newest:
        msg = (
            f"TensorFlow {version} is newer than the compatibility table, which knows "
            f"TensorFlow {span}"
        )
        hint = (
            f"use TensorFlow {known[-1]} (the newest the table knows), or add a {key} row to "
            "_TENSORFLOW in hepml_images/compat.py with its Python range, CUDA and cuDNN from "
            '"Tested build configurations" on https://www.tensorflow.org/install/source '
            "(there is no switch to skip this check)"
        )
    else:
        msg = f"TensorFlow {version} is not in the compatibility table (it knows TensorFlow {span})"
        hint = f"known TensorFlow versions: {_join(known)}"
    return IncompatibleVersions(msg, hint=hint)


def tensorflow_config(version: str) -> TensorflowConfig:
    """Return the tested configuration of a TensorFlow release.

    ``version`` may name the minor release (``"2.17"``) or a patch of it (``"2.17.1"``). A
    version newer than the table, or a patch release that was never published (``"2.16.0"``),
    is an error that says what to use instead.
    """
    release = _release(version, "TensorFlow")
    key = f"{release[0]}.{release[1]}"
    for row in _TENSORFLOW:
        if row.tensorflow == key:
            _check_patch(row, version, release)
            return row
    raise _not_in_table(version, key)


def _python_minors(spec: SpecifierSet) -> tuple[str, ...]:
    """Return the Python 3 minor versions a specifier admits, oldest first."""
    return tuple(f"3.{minor}" for minor in range(30) if Version(f"3.{minor}") in spec)


def _python_range(spec: SpecifierSet) -> str:
    """Return a tested range such as ``"3.9\u20133.12"``."""
    minors = _python_minors(spec)
    return f"{minors[0]}{_EN_DASH}{minors[-1]}"


def _check_python(config: TensorflowConfig, python: str) -> None:
    wanted = _major_minor(python, "Python")
    if Version(wanted) in config.python:
        return
    tested = _python_range(config.python)
    others = [row.tensorflow for row in _TENSORFLOW if Version(wanted) in row.python]
    if others:
        hint = f"TensorFlow versions tested with Python {wanted}: {_join(others)}"
    else:
        known = sorted({m for row in _TENSORFLOW for m in _python_minors(row.python)}, key=Version)
        hint = (
            f"no TensorFlow version in the table is tested with Python {wanted} "
            f"(the table covers Python {known[0]}{_EN_DASH}{known[-1]})"
        )
    hint += f"; or use Python {tested} with TensorFlow {config.tensorflow}"
    msg = f"TensorFlow {config.tensorflow} is not tested with Python {wanted} (tested: {tested})"
    raise IncompatibleVersions(msg, hint=hint)


def _check_cuda(config: TensorflowConfig, cuda: str) -> None:
    wanted = _major_minor(cuda, "CUDA")
    if wanted == config.cuda:
        return
    others = [row.tensorflow for row in _TENSORFLOW if row.cuda == wanted]
    hint = f"TensorFlow {config.tensorflow} wants CUDA {config.cuda} with cuDNN {config.cudnn}"
    if others:
        hint += f"; TensorFlow versions tested with CUDA {wanted}: {_join(others)}"
    msg = (
        f"TensorFlow {config.tensorflow} is not tested with CUDA {wanted} "
        f"(tested: CUDA {config.cuda})"
    )
    raise IncompatibleVersions(msg, hint=hint)


def _cudnn_fits(tested: str, given: tuple[int, ...]) -> bool:
    """Return whether cuDNN ``given`` has the tested major and at least the tested minor."""
    want = Version(tested).release
    return given[0] == want[0] and given[1] >= want[1]


def _check_cudnn(config: TensorflowConfig, cudnn: str) -> None:
    given = _release(cudnn, "cuDNN")
    if _cudnn_fits(config.cudnn, given):
        return
    wanted = f"{given[0]}.{given[1]}"
    major = config.cudnn.split(".", maxsplit=1)[0]
    others = [row.tensorflow for row in _TENSORFLOW if _cudnn_fits(row.cudnn, given)]
    hint = (
        f"TensorFlow {config.tensorflow} wants cuDNN {config.cudnn} or a later {major}.x "
        f"release, with CUDA {config.cuda}"
    )
    if others:
        hint += f"; TensorFlow versions that work with cuDNN {wanted}: {_join(others)}"
    msg = (
        f"TensorFlow {config.tensorflow} is not tested with cuDNN {wanted} "
        f"(tested: cuDNN {config.cudnn})"
    )
    raise IncompatibleVersions(msg, hint=hint)


def check_tensorflow(
    tensorflow: str,
    python: str,
    cuda: str | None = None,
    cudnn: str | None = None,
) -> TensorflowConfig:
    """Check a TensorFlow / Python / CUDA / cuDNN combination against the tested table.

    Python and CUDA compare on ``MAJOR.MINOR`` and must be in the tested set; cuDNN must have
    the tested major version and at least the tested minor. ``cuda`` and ``cudnn`` are only
    checked when given. Returns the TensorFlow configuration when everything fits.
    """
    config = tensorflow_config(tensorflow)
    _check_python(config, python)
    if cuda is not None:
        _check_cuda(config, cuda)
    if cudnn is not None:
        _check_cudnn(config, cudnn)
    return config


# --------------------------------------------------------------------------------------------
# CUDA toolkit and NVIDIA driver
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriverRequirement:
    """The Linux x86_64 NVIDIA driver a CUDA toolkit release needs.

    ``toolkit_driver`` is the driver of full compatibility (the one NVIDIA lists for the
    release), ``minor_compat_driver`` the lower floor that CUDA minor-version compatibility
    allows within the major release, or ``None`` where that floor is not lower.
    """

    cuda: str
    toolkit_driver: str
    minor_compat_driver: str | None


@dataclass(frozen=True)
class _ToolkitRelease:
    """One row of NVIDIA's toolkit/driver table: a GA or update release."""

    version: str
    label: str
    driver: str


# NVIDIA CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions",
# Linux x86_64 column (rows to 13.2 audited against it; 13.3 added 2026-12-02, see below).
# Update N of CUDA X.Y is release X.Y.N; CUDA 11.0 is numbered apart (11.0.1 was the RC, 11.0.2
# the GA), and so is CUDA 13.4 (13.4.0 was a developer preview, the GA is 13.4.1 and Update 1
# is 13.4.2), so a 13.4 row must carry those numbers. Releases the table does not list (such
# as 12.3.2) use the newest listed release of the same minor that is not newer than them.
_TOOLKITS: tuple[_ToolkitRelease, ...] = (
    _ToolkitRelease("11.0.1", "RC", "450.36.06"),
    _ToolkitRelease("11.0.2", "GA", "450.51.05"),
    _ToolkitRelease("11.0.3", "Update 1", "450.51.06"),
    _ToolkitRelease("11.1.0", "GA", "455.23"),
    _ToolkitRelease("11.1.1", "Update 1", "455.32"),
    _ToolkitRelease("11.2.0", "GA", "460.27.03"),
    _ToolkitRelease("11.2.1", "Update 1", "460.32.03"),
    _ToolkitRelease("11.2.2", "Update 2", "460.32.03"),
    _ToolkitRelease("11.3.0", "GA", "465.19.01"),
    _ToolkitRelease("11.3.1", "Update 1", "465.19.01"),
    _ToolkitRelease("11.4.0", "GA", "470.42.01"),
    _ToolkitRelease("11.4.1", "Update 1", "470.57.02"),
    _ToolkitRelease("11.4.2", "Update 2", "470.57.02"),
    _ToolkitRelease("11.4.3", "Update 3", "470.82.01"),
    _ToolkitRelease("11.4.4", "Update 4", "470.82.01"),
    _ToolkitRelease("11.5.0", "GA", "495.29.05"),
    _ToolkitRelease("11.5.1", "Update 1", "495.29.05"),
    _ToolkitRelease("11.5.2", "Update 2", "495.29.05"),
    _ToolkitRelease("11.6.0", "GA", "510.39.01"),
    _ToolkitRelease("11.6.1", "Update 1", "510.47.03"),
    _ToolkitRelease("11.6.2", "Update 2", "510.47.03"),
    _ToolkitRelease("11.7.0", "GA", "515.43.04"),
    _ToolkitRelease("11.7.1", "Update 1", "515.48.07"),
    _ToolkitRelease("11.8.0", "GA", "520.61.05"),
    _ToolkitRelease("12.0.0", "GA", "525.60.13"),
    _ToolkitRelease("12.0.1", "Update 1", "525.85.12"),
    _ToolkitRelease("12.1.0", "GA", "530.30.02"),
    _ToolkitRelease("12.1.1", "Update 1", "530.30.02"),
    _ToolkitRelease("12.2.0", "GA", "535.54.03"),
    _ToolkitRelease("12.2.1", "Update 1", "535.86.09"),
    _ToolkitRelease("12.2.2", "Update 2", "535.104.05"),
    _ToolkitRelease("12.3.0", "GA", "545.23.06"),
    _ToolkitRelease("12.3.1", "Update 1", "545.23.08"),
    _ToolkitRelease("12.4.0", "GA", "550.54.14"),
    _ToolkitRelease("12.4.1", "Update 1", "550.54.15"),
    _ToolkitRelease("12.5.0", "GA", "555.42.02"),
    _ToolkitRelease("12.5.1", "Update 1", "555.42.06"),
    _ToolkitRelease("12.6.0", "GA", "560.28.03"),
    _ToolkitRelease("12.6.1", "Update 1", "560.35.03"),
    _ToolkitRelease("12.6.2", "Update 2", "560.35.03"),
    _ToolkitRelease("12.6.3", "Update 3", "560.35.05"),
    _ToolkitRelease("12.8.0", "GA", "570.26"),
    _ToolkitRelease("12.8.1", "Update 1", "570.124.06"),
    _ToolkitRelease("12.9.0", "GA", "575.51.03"),
    _ToolkitRelease("12.9.1", "Update 1", "575.57.08"),
    _ToolkitRelease("13.0.0", "GA", "580.65.06"),
    _ToolkitRelease("13.0.1", "Update 1", "580.82.07"),
    _ToolkitRelease("13.0.2", "Update 2", "580.95.05"),
    _ToolkitRelease("13.1.0", "GA", "590.44.01"),
    _ToolkitRelease("13.1.1", "Update 1", "590.48.01"),
    _ToolkitRelease("13.2.0", "GA", "595.45.04"),
    _ToolkitRelease("13.2.1", "Update 1", "595.58.03"),
    _ToolkitRelease("13.2.2", "Update 2", "595.71.05"),
    # CUDA 13.3 GA and Update 1: >= 610.43.02 both. The release-notes page itself could not be
    # read here (2026-12-02); the rows agree with NVIDIA's installers, which name the driver
    # they ship (cuda_13.3.0_610.43.02_linux.run, cuda-repo-*-13-3-local_13.3.1-610.43.02-1),
    # and with meson's copy of NVIDIA's table (mesonbuild/modules/cuda.py). CUDA 13.4 is not
    # here: its installers no longer name a driver and its row could not be checked.
    _ToolkitRelease("13.3.0", "GA", "610.43.02"),
    _ToolkitRelease("13.3.1", "Update 1", "610.43.02"),
)


@dataclass(frozen=True)
class _MinorCompat:
    """The lowest driver that runs any release of a CUDA major via minor-version compat."""

    major: int
    driver: str


# NVIDIA: 11.x needs >= 450.80.02 (CUDA 11.0 shipped an older driver), 12.x >= 525.60.13
# (the 12.0 GA driver), 13.x ">= 580" (NVIDIA names the branch only).
_MINOR_COMPAT: tuple[_MinorCompat, ...] = (
    _MinorCompat(11, "450.80.02"),
    _MinorCompat(12, "525.60.13"),
    _MinorCompat(13, "580"),
)

_DRIVER_PATTERN = re.compile(r"\d+(?:\.\d+){0,2}")


def _driver_key(driver: str) -> tuple[int, int, int]:
    """Return a driver version as three integers (``"570.26"`` -> ``(570, 26, 0)``)."""
    text = driver.strip()
    if not _DRIVER_PATTERN.fullmatch(text):
        msg = f"NVIDIA driver version {driver!r} is not of the form MAJOR.MINOR[.PATCH]"
        hint = "use the version nvidia-smi prints, for example 535.104.05"
        raise IncompatibleVersions(msg, hint=hint)
    numbers = [int(part) for part in text.split(".")]
    numbers += [0] * (_MAJOR_MINOR_PATCH - len(numbers))
    return numbers[0], numbers[1], numbers[2]


def _minor_key(release: _ToolkitRelease) -> str:
    major, minor, _ = Version(release.version).release
    return f"{major}.{minor}"


def known_cuda_versions() -> tuple[str, ...]:
    """Return the CUDA ``MAJOR.MINOR`` versions in the driver table, oldest first."""
    keys = {_minor_key(release) for release in _TOOLKITS}
    return tuple(sorted(keys, key=_mm_version))


def _toolkit_release(cuda: str) -> tuple[str, _ToolkitRelease]:
    """Return the normalised CUDA version and the table row that governs it."""
    release = _release(cuda, "CUDA", longest=_MAJOR_MINOR_PATCH)
    key = f"{release[0]}.{release[1]}"
    rows = [row for row in _TOOLKITS if _minor_key(row) == key]
    if not rows:
        msg = f"CUDA {cuda} is not in the driver table"
        hint = f"known CUDA versions: {_join(known_cuda_versions())}"
        raise IncompatibleVersions(msg, hint=hint)
    ga = next(row for row in rows if row.label == "GA")
    if len(release) == _MAJOR_MINOR:
        return key, ga
    asked = Version(".".join(str(part) for part in release))
    listed = [row for row in rows if Version(row.version) <= asked]
    row = max(listed, key=lambda r: Version(r.version)) if listed else ga
    return str(asked), row


def _minor_compat_floor(cuda_major: int, toolkit_driver: str) -> str | None:
    for entry in _MINOR_COMPAT:
        if entry.major == cuda_major and _driver_key(entry.driver) < _driver_key(toolkit_driver):
            return entry.driver
    return None


def driver_requirement(cuda: str) -> DriverRequirement:
    """Return the NVIDIA driver a CUDA release needs on Linux x86_64.

    ``cuda`` is ``"12.3"`` (the GA release of that minor) or a specific release such as
    ``"12.3.2"``, which gets the driver of the newest listed update it includes.
    """
    name, row = _toolkit_release(cuda)
    return DriverRequirement(
        cuda=name,
        toolkit_driver=row.driver,
        minor_compat_driver=_minor_compat_floor(Version(row.version).major, row.driver),
    )


class DriverVerdict(enum.Enum):
    """How a host driver relates to what a CUDA release needs."""

    OK = "ok"
    MINOR_COMPAT = "minor-compat"
    TOO_OLD = "too-old"


@dataclass(frozen=True)
class DriverCheck:
    """The verdict on a host driver for a CUDA release, with a sentence for the user."""

    verdict: DriverVerdict
    message: str


def _newest_supported_cuda(driver: tuple[int, int, int]) -> str | None:
    """Return the newest CUDA ``MAJOR.MINOR`` whose GA release fully supports ``driver``."""
    supported = [
        _minor_key(row)
        for row in _TOOLKITS
        if row.label == "GA" and _driver_key(row.driver) <= driver
    ]
    return max(supported, key=_mm_version) if supported else None


def check_driver(driver: str, cuda: str) -> DriverCheck:
    """Judge whether the host NVIDIA ``driver`` can run containers built for ``cuda``.

    Driver versions compare numerically component by component (``535.104.05`` is newer than
    ``535.54.03``). When the driver is too old the message names the newest CUDA release in
    the table that it fully supports.
    """
    have = _driver_key(driver)
    need = driver_requirement(cuda)
    if have >= _driver_key(need.toolkit_driver):
        return DriverCheck(
            DriverVerdict.OK,
            f"driver {driver} supports CUDA {need.cuda} (it needs >= {need.toolkit_driver})",
        )
    floor = need.minor_compat_driver
    if floor is not None and have >= _driver_key(floor):
        return DriverCheck(
            DriverVerdict.MINOR_COMPAT,
            f"driver {driver} runs CUDA {need.cuda} only through minor-version compatibility: "
            f"full support needs >= {need.toolkit_driver}; features that need the newer "
            f"driver (for example JIT compilation of PTX from this toolkit) are unavailable, "
            f"so update the host NVIDIA driver to >= {need.toolkit_driver} where you can",
        )
    message = f"driver {driver} is too old for CUDA {need.cuda}: it needs >= {need.toolkit_driver}"
    if floor is not None:
        message += f" (or >= {floor} with minor-version compatibility)"
    newest = _newest_supported_cuda(have)
    if newest is None:
        message += "; update the host NVIDIA driver (no CUDA release in the table supports it)"
    else:
        message += f"; update the host NVIDIA driver or use an image built for CUDA {newest}"
    return DriverCheck(DriverVerdict.TOO_OLD, message)


def driver_cuda_version(driver: str) -> str | None:
    """Return the CUDA ``MAJOR.MINOR`` a host driver reports, as far as the table can tell.

    That is the newest CUDA release whose GA driver it meets (``535.104.05`` -> ``"12.2"``); a
    driver branch released without a toolkit reports one more (R565 reports 12.7, which the
    table, having no 12.7, reads as 12.6). ``None`` for a driver older than every row.
    """
    return _newest_supported_cuda(_driver_key(driver))


# --------------------------------------------------------------------------------------------
# NVIDIA_REQUIRE_CUDA: what the NVIDIA container runtime checks before a GPU container starts
# --------------------------------------------------------------------------------------------
#
# libnvidia-container (src/cli/dsl.c, configure.c) and the NVIDIA Container Toolkit's Go
# re-implementation (internal/requirements) read the variable as terms separated by spaces,
# any one of which is enough (OR), each made of conditions separated by commas that must all
# hold (AND). A condition is PROPERTY OP VALUE with OP one of = != < <= > >=; the properties
# are ``cuda`` (the CUDA version the host driver reports), ``driver`` (the driver version),
# ``arch`` (compute capability) and ``brand`` (the GPU's NVML brand, compared as a
# case-insensitive string). Versions compare numerically component by component, missing
# components counting as 0. libnvidia-container checks the expression for every visible GPU
# and refuses the container when one of them fails it.
#
# NVIDIA's own CUDA images (gitlab.com/nvidia/container-images/cuda; e.g. nvidia/cuda
# 12.5.1 and 12.8.1) write ``cuda>=12.8`` followed by ``brand=B,driver>=N,driver<N+1`` for
# older driver branches (470, 535, 550, 560, 565 for 12.8) and for twelve brands (unknown,
# grid, tesla, nvidia, quadro, quadrortx, nvidiartx, vapps, vpc, vcs, vws, cloudgaming): those
# images ship the cuda-compat package, and the branch terms admit the hosts that forward
# compatibility or minor-version compatibility lets run them. Our images do not ship
# cuda-compat, and the driver preflight (check_driver) accepts a host by its driver version
# alone: the minor-version-compatibility floor of the CUDA major, for every GPU brand. So the
# rendered constraint says exactly that, with one brand-free driver term, instead of a term per
# branch and brand (which would refuse GeForce/Titan and any brand not listed, and every
# branch not listed, such as R565, which has no toolkit of its own):
#
#     cuda>=12.5 driver>=525.60.13
#
# Where the major has no lower floor than the release's own driver (CUDA 11.0, 12.0), the one
# term is ``cuda>=12.0,driver>=525.60.13``: a pre-release driver of the branch already reports
# that CUDA but is older than NVIDIA's minimum, which the preflight refuses.
#
# ``cuda>=X`` comes first because libnvidia-container quotes the first term when it refuses a
# container, as the unsatisfied condition, and then asks for a newer driver. Driver
# versions are written without leading zeros (450.80.2, not 450.80.02): the Go implementation
# validates every value as a semantic version and rejects 02.


def _plain_version(driver: str) -> str:
    """Return a driver version without leading zeros in its components (``450.80.2``)."""
    return ".".join(str(int(part)) for part in driver.strip().split("."))


def nvidia_require_cuda(cuda: str) -> str:
    """Return the ``NVIDIA_REQUIRE_CUDA`` value for an image built for ``cuda``.

    The NVIDIA container runtime accepts a host with it exactly when :func:`check_driver`
    does not say the driver is too old: when the driver reports at least this CUDA minor, or
    the driver is at least the minor-version-compatibility floor of the CUDA major (the
    toolkit's own driver where there is no lower floor, as for CUDA 11.0).
    """
    need = driver_requirement(cuda)
    release = Version(need.cuda).release
    wanted = f"cuda>={release[0]}.{release[1]}"
    if need.minor_compat_driver is None:
        # CUDA 11.0 and 12.0: a pre-release driver of the branch (the 11.0 RC's 450.36.06, a
        # 525 beta) already reports this CUDA but is older than what NVIDIA requires for it
        return f"{wanted},driver>={_plain_version(need.toolkit_driver)}"
    return f"{wanted} driver>={_plain_version(need.minor_compat_driver)}"


def _compare_versions(have: str, op: str, want: str) -> bool:
    left = [int(part) for part in have.split(".")]
    right = [int(part) for part in want.split(".")]
    width = max(len(left), len(right))
    a = tuple(left + [0] * (width - len(left)))
    b = tuple(right + [0] * (width - len(right)))
    results = {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}
    return results[op]


def _condition(text: str, host: dict[str, str | None]) -> bool:
    match = re.fullmatch(r"([a-z]+)(<=|>=|!=|<|>|=)([A-Za-z0-9.]+)", text)
    if match is None or match.group(1) not in host:
        msg = f"invalid NVIDIA requirement condition {text!r}"
        raise ValueError(msg)
    name, op, want = match.groups()
    have = host[name]
    if have is None:
        return True  # libnvidia-container: a property it cannot read does not refuse
    if name == "brand":
        if op not in {"=", "!="}:
            msg = f"invalid NVIDIA requirement condition {text!r}: brands compare with = or !="
            raise ValueError(msg)
        return (have.lower() == want.lower()) == (op == "=")
    if not _DRIVER_PATTERN.fullmatch(want):
        msg = f"invalid NVIDIA requirement condition {text!r}: {want!r} is not a version"
        raise ValueError(msg)
    return _compare_versions(have, op, want)


def require_satisfied(
    requirement: str,
    *,
    driver: str,
    cuda: str | None,
    brand: str | None = None,
    arch: str | None = None,
) -> bool:
    """Evaluate an ``NVIDIA_REQUIRE_*`` value for one GPU the way the NVIDIA runtime does.

    ``driver`` is the host driver version, ``cuda`` the CUDA version it reports (see
    :func:`driver_cuda_version`), ``brand`` the GPU's NVML brand (``tesla``, ``geforce`` ...)
    and ``arch`` its compute capability; a property given as ``None`` holds, as it does in
    libnvidia-container when it cannot read it. Terms separated by spaces are alternatives,
    conditions separated by commas within a term must all hold; an empty requirement holds.
    Raises ``ValueError`` for a condition libnvidia-container would reject as invalid.
    """
    host: dict[str, str | None] = {"cuda": cuda, "driver": driver, "brand": brand, "arch": arch}
    terms = [term for term in requirement.split(" ") if term]
    if not terms:
        return True
    for term in terms:
        conditions = [condition for condition in term.split(",") if condition]
        if all(_condition(condition, host) for condition in conditions):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Python shipped by distributions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SystemPython:
    """A Python the distribution ships; ``since`` is the first point release that has it."""

    version: str
    since: str | None = None


@dataclass(frozen=True)
class _DistroRelease:
    """A distribution release: its names (codename and number) and its Pythons."""

    family: str
    names: tuple[str, ...]
    pythons: tuple[_SystemPython, ...]


_DISTROS: tuple[_DistroRelease, ...] = (
    # packages.debian.org, source package python3-defaults
    _DistroRelease("debian", ("bullseye", "11"), (_SystemPython("3.9"),)),
    _DistroRelease("debian", ("bookworm", "12"), (_SystemPython("3.11"),)),
    _DistroRelease("debian", ("trixie", "13"), (_SystemPython("3.13"),)),
    # packages.ubuntu.com, package python3
    _DistroRelease("ubuntu", ("focal", "20.04"), (_SystemPython("3.8"),)),
    _DistroRelease("ubuntu", ("jammy", "22.04"), (_SystemPython("3.10"),)),
    _DistroRelease("ubuntu", ("noble", "24.04"), (_SystemPython("3.12"),)),
    # RHEL 7 gained the python3 package (3.6) in 7.7; before that it had Python 2 only.
    _DistroRelease("el7", ("7",), (_SystemPython("3.6", since="7.7"),)),
    # RHEL 9: python3 (3.9) in BaseOS for the whole life cycle; python3.11 and python3.12 in
    # AppStream since 9.2 and 9.4.
    _DistroRelease(
        "el9",
        ("9",),
        (
            _SystemPython("3.9"),
            _SystemPython("3.11", since="9.2"),
            _SystemPython("3.12", since="9.4"),
        ),
    ),
)

_POINT_RELEASE = re.compile(r"(\d+)\.(\d+)")


def _known_releases(family: str) -> str:
    names = ["/".join(distro.names) for distro in _DISTROS if distro.family == family]
    return _join(names)


def distro_python(family: str, release: str) -> tuple[str, ...]:
    """Return the Python versions a distribution release ships, oldest first.

    ``family`` is one of ``debian``, ``ubuntu``, ``el7`` and ``el9``; ``release`` is the
    codename or version (``"bookworm"``, ``"12"``, ``"noble"``, ``"24.04"``, ``"9"``). For the
    RHEL families a point release (``"9.2"``) leaves out Pythons added after it, while the bare
    major (``"9"``) means the current point release.
    """
    fam = family.strip().lower()
    rel = release.strip().lower()
    rows = [distro for distro in _DISTROS if distro.family == fam]
    if not rows:
        families = _join(sorted({distro.family for distro in _DISTROS}))
        msg = f"unknown distribution family {family!r}"
        raise IncompatibleVersions(msg, hint=f"known families: {families}")
    for distro in rows:
        if rel in distro.names:
            return tuple(python.version for python in distro.pythons)
    point = _POINT_RELEASE.fullmatch(rel)
    if fam.startswith("el") and point is not None:
        for distro in rows:
            if point.group(1) in distro.names:
                asked = Version(rel)
                return tuple(
                    python.version
                    for python in distro.pythons
                    if python.since is None or Version(python.since) <= asked
                )
    msg = f"unknown {fam} release {release!r}"
    raise IncompatibleVersions(msg, hint=f"known {fam} releases: {_known_releases(fam)}")
