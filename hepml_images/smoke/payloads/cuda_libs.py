"""In-container check that the CUDA runtime and cuDNN libraries load and have the right versions.

Usage: ``cuda_libs.py --cuda MAJOR.MINOR [--cudnn MAJOR[.MINOR]]``

Stand-alone (Python 3.8+, standard library only); the smoke-test runner passes the source as
``python -c SOURCE ARGS...``, so nothing here relies on ``__file__``. No GPU is needed: loading
the libraries and asking their versions works without one.

``libcudart.so.<MAJOR>`` and ``libcudnn.so.<MAJOR>`` are looked for, in this order:

1. the NVIDIA pip wheels' library folders, ``nvidia/*/lib`` under every ``sys.path`` entry
   (how ``tensorflow[and-cuda]`` and PyTorch ship them);
2. the folders of ``LD_LIBRARY_PATH``;
3. the loader cache (``ldconfig -p``);
4. ``/usr/local/cuda/lib64`` and ``/usr/local/cuda-*/lib64``;
5. the dynamic loader's own default search, by bare name.

The first file that loads with ``ctypes.CDLL`` and exports the version function is used:
``cudaRuntimeGetVersion`` must report the requested CUDA major (the minor is reported; CUDA's
minor-version compatibility lets it differ), ``cudnnGetVersion`` the requested cuDNN major (and
minor, when one is given). It prints ONE line of JSON on stdout::

    {"ok": ..., "cudart": {"path": ..., "version": "12.4", ...}, "cudnn": {...} or null,
     "message": ...}

and exits 0 when everything requested loaded with the right version, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = "In-container check that the CUDA runtime and cuDNN libraries load."
CUDNN_NEW_SCHEME = 90000  # cuDNN 9 encodes major*10000 + minor*100 + patch, 8 and older *1000


def parse_version(text: str, *, minor_required: bool) -> tuple[int, int | None]:
    """``"12.4"`` -> (12, 4); ``"9"`` -> (9, None) when the minor is optional."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)?", text.strip())
    if match is None or (minor_required and match.group(2) is None):
        shape = "MAJOR.MINOR" if minor_required else "MAJOR[.MINOR]"
        raise argparse.ArgumentTypeError(f"{text!r} is not a version {shape}")
    minor = match.group(2)
    return int(match.group(1)), None if minor is None else int(minor)


def wheel_dirs() -> list[Path]:
    """The NVIDIA wheels' library folders: ``nvidia/*/lib`` under every sys.path entry."""
    found: list[Path] = []
    for entry in sys.path:
        base = Path(entry) if entry else Path.cwd()
        found.extend(sorted(base.glob("nvidia/*/lib")))
    return found


def library_path_dirs() -> list[Path]:
    """The folders of LD_LIBRARY_PATH."""
    return [Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]


def toolkit_dirs() -> list[Path]:
    """The CUDA toolkit's library folders: /usr/local/cuda/lib64, /usr/local/cuda-*/lib64."""
    return [Path("/usr/local/cuda/lib64"), *sorted(Path("/usr/local").glob("cuda-*/lib64"))]


def ldconfig_paths(soname: str) -> list[Path]:
    """Paths of ``soname`` in the loader cache (``ldconfig -p``), if ldconfig is there."""
    for ldconfig in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            listing = subprocess.run(  # noqa: S603  # fixed argument list, no shell
                [ldconfig, "-p"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        paths = []
        for line in listing.splitlines():
            name, _, rest = line.strip().partition(" ")
            if name == soname and "=>" in rest:
                paths.append(Path(rest.split("=>", 1)[1].strip()))
        return paths
    return []


def candidates(soname: str) -> list[tuple[str, str]]:
    """(where, path-or-name) to try, in search order, without duplicates."""
    ordered: list[tuple[str, Path]] = []
    ordered.extend(("pip wheel", d / soname) for d in wheel_dirs())
    ordered.extend(("LD_LIBRARY_PATH", d / soname) for d in library_path_dirs())
    ordered.extend(("ldconfig -p", path) for path in ldconfig_paths(soname))
    ordered.extend(("CUDA toolkit", d / soname) for d in toolkit_dirs())
    seen = set()
    unique = []
    for where, path in ordered:
        if not path.exists():
            continue
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((where, str(path)))
    unique.append(("loader default", soname))
    return unique


def loaded_path(soname: str) -> str | None:
    """The file behind a library loaded by bare name, read from /proc/self/maps."""
    stem = soname.split(".so", 1)[0] + ".so"
    try:
        with Path("/proc/self/maps").open(encoding="utf-8") as handle:
            for line in handle:
                fields = line.split(None, 5)  # address perms offset device inode [path]
                path = fields[5].strip() if len(fields) == 6 else ""  # noqa: PLR2004
                if path and Path(path).name.startswith(stem):
                    return path
    except OSError:
        return None
    return None


def load(soname: str, symbol: str) -> tuple[ctypes.CDLL | None, dict[str, Any]]:
    """Load the first candidate of ``soname`` that exports ``symbol``."""
    tried = []
    for where, path in candidates(soname):
        try:
            library = ctypes.CDLL(path)
            getattr(library, symbol)
        except (OSError, AttributeError) as error:  # each failure is reported
            tried.append(f"{path} ({where}): {error}")
            continue
        real = path if os.sep in path else (loaded_path(soname) or path)
        return library, {"path": str(Path(real).resolve()), "found_by": where, "tried": tried}
    return None, {"path": None, "found_by": None, "tried": tried}


def other_majors(stem: str, major: int) -> list[str]:
    """Files of the same library with another major version, for the hint of a failed search."""
    dirs = [*wheel_dirs(), *library_path_dirs(), *toolkit_dirs()]
    dirs += [*Path("/usr/lib").glob("*-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib")]
    found: dict[Path, str] = {}  # one path per real file: /usr/local/cuda is often a link
    for directory in dirs:
        for path in sorted(directory.glob(stem + ".so.*")):
            version = path.name[len(stem) + len(".so.") :].split(".")[0]
            if version.isdigit() and int(version) != major:
                found.setdefault(path.resolve(), str(path))
    return sorted(found.values())


def check_cudart(major: int, minor: int) -> tuple[bool, dict[str, Any], str]:
    """Load libcudart.so.<major> and compare cudaRuntimeGetVersion with the request."""
    soname = f"libcudart.so.{major}"
    library, report = load(soname, "cudaRuntimeGetVersion")
    report["requested"] = f"{major}.{minor}"
    if library is None:
        others = other_majors("libcudart", major)
        hint = f"; other CUDA runtimes present: {', '.join(others)}" if others else ""
        return False, report, f"CUDA runtime {major}.{minor}: {soname} could not be loaded{hint}"
    get_version = library.cudaRuntimeGetVersion
    get_version.argtypes = [ctypes.POINTER(ctypes.c_int)]
    get_version.restype = ctypes.c_int
    value = ctypes.c_int(0)
    status = get_version(ctypes.byref(value))
    if status != 0:
        report["version"] = None
        return False, report, f"cudaRuntimeGetVersion in {report['path']} failed (error {status})"
    got_major, got_minor = value.value // 1000, (value.value % 1000) // 10
    report["version"] = f"{got_major}.{got_minor}"
    if got_major != major:
        return (
            False,
            report,
            f"{report['path']} is CUDA runtime {got_major}.{got_minor}, {major}.{minor} requested",
        )
    note = "" if got_minor == minor else f" ({major}.{minor} requested: same major, minor differs)"
    return True, report, f"CUDA runtime {got_major}.{got_minor} loaded from {report['path']}{note}"


def decode_cudnn(value: int) -> tuple[int, int, int]:
    """The number cudnnGetVersion returns as (major, minor, patch)."""
    if value >= CUDNN_NEW_SCHEME:
        return value // 10000, (value % 10000) // 100, value % 100
    return value // 1000, (value % 1000) // 100, value % 100


def check_cudnn(major: int, minor: int | None) -> tuple[bool, dict[str, Any], str]:
    """Load libcudnn.so.<major> and compare cudnnGetVersion with the request."""
    soname = f"libcudnn.so.{major}"
    requested = f"{major}" if minor is None else f"{major}.{minor}"
    library, report = load(soname, "cudnnGetVersion")
    report["requested"] = requested
    if library is None:
        others = other_majors("libcudnn", major)
        hint = f"; other cuDNN libraries present: {', '.join(others)}" if others else ""
        return False, report, f"cuDNN {requested}: {soname} could not be loaded{hint}"
    get_version = library.cudnnGetVersion
    get_version.argtypes = []
    get_version.restype = ctypes.c_size_t
    got = decode_cudnn(int(get_version()))
    report["version"] = ".".join(str(part) for part in got)
    if got[0] != major or (minor is not None and got[1] != minor):
        return (
            False,
            report,
            f"{report['path']} is cuDNN {report['version']}, {requested} requested",
        )
    return True, report, f"cuDNN {report['version']} loaded from {report['path']}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the JSON line, return the exit status."""
    parser = argparse.ArgumentParser(prog="cuda_libs.py", description=DESCRIPTION)
    parser.add_argument(
        "--cuda",
        required=True,
        metavar="MAJOR.MINOR",
        type=lambda text: parse_version(text, minor_required=True),
    )
    parser.add_argument(
        "--cudnn",
        metavar="MAJOR[.MINOR]",
        type=lambda text: parse_version(text, minor_required=False),
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"ok": False, "cudart": None, "cudnn": None, "message": ""}
    messages = []
    try:
        cuda_major, cuda_minor = args.cuda
        ok, result["cudart"], message = check_cudart(cuda_major, cuda_minor)
        messages.append(message)
        if args.cudnn is not None:
            cudnn_ok, result["cudnn"], message = check_cudnn(*args.cudnn)
            ok = ok and cudnn_ok
            messages.append(message)
        else:
            messages.append("cuDNN not checked (no --cudnn)")
        result["ok"] = ok
    except Exception as error:  # noqa: BLE001  # report, never a bare traceback
        messages.append(f"check raised {type(error).__name__}: {error}")
    result["message"] = "; ".join(messages)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
