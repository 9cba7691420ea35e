"""Lock files: what one variant installs, exactly. Pure (parsing, writing, comparing).

One lock per variant, next to its spec: ``<dir>/<spec file stem>.locks/pylock.<variant>.toml``
(dots in the variant name become ``_``: PEP 751 allows no dot in a lock's name). The file is a
PEP 751 ``pylock.toml``: its ``[[packages]]`` are every Python distribution of the variant's venv
(its ancestors' included) with the exact version and the sha256 of every file pip may pick for
the image's Python and platform, as ``uv pip compile --format pylock.toml`` writes them. What
PEP 751 has no place for goes into its ``[tool.hepml]`` table:

- ``inputs``: what the lock was resolved from (the Python and platform it was resolved for, the
  requirements, the OS packages asked for, the parent's lock). A lock whose inputs differ from
  what the spec asks for now is *stale*; ``stale()`` names what changed.
- ``os``: every distribution package the variant's package-manager steps install (its ancestors'
  included), with its exact version, and where it was resolved (``apt-get install --simulate``
  inside the image at the root of the variant's ``extends`` chain).
- ``base``: the base image: its reference and registry digest where known, or the package set of
  a bootstrapped root filesystem.

``build`` installs exactly the lock: the pip step installs a hash-locked requirements file made
from it (``--no-deps --require-hashes``; only what the parent image does not have already), the
package-manager step ``name=version`` for every package the parent's lock does not hold.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: Bump when the meaning of ``[tool.hepml]`` changes.
FORMAT = 1
LOCK_DIR_SUFFIX = ".locks"
#: The packages whose locked versions labels and compatibility checks care about.
KEY_PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "h5py",
    "numpy",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cudnn-cu12",
    "nvidia-cublas-cu12",
    "nvidia-cuda-runtime-cu11",
    "nvidia-cudnn-cu11",
)

#: glibc of each distribution release: the manylinux tag that its pip accepts wheels up to.
_GLIBC = {
    ("debian", "bullseye"): "2_31",
    ("debian", "bookworm"): "2_36",
    ("debian", "trixie"): "2_41",
    ("ubuntu", "focal"): "2_31",
    ("ubuntu", "jammy"): "2_35",
    ("ubuntu", "noble"): "2_39",
    ("el9", "9"): "2_34",
    ("el7", "7"): "2_17",
}
_GLIBC_FAMILY = {"debian": "2_36", "ubuntu": "2_35", "el9": "2_34", "el7": "2_17"}


class LockProblem(Exception):  # noqa: N818 - like spec.values.ValueProblem
    """A lock file that cannot be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def lock_dir(spec_path: PurePath) -> PurePath:
    """The directory of a spec's locks, beside the spec file."""
    return spec_path.parent / f"{spec_path.stem}{LOCK_DIR_SUFFIX}"


def lock_name(slug: str) -> str:
    """The file name of a variant's lock (PEP 751: ``pylock.<name>.toml``, no dot in name)."""
    return f"pylock.{slug.replace('.', '_')}.toml"


def lock_path(spec_path: PurePath, slug: str) -> PurePath:
    """Where the lock of variant ``slug`` of the spec at ``spec_path`` lives."""
    return lock_dir(spec_path) / lock_name(slug)


def python_platform(family: str, release: str | None) -> str:
    """The ``--python-platform`` uv resolves for: x86_64 with the distribution's glibc."""
    glibc = _GLIBC.get((family, release or ""), _GLIBC_FAMILY.get(family, "2_17"))
    return f"x86_64-manylinux_{glibc}"


def normalize(name: str) -> str:
    """A project name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What a variant's lock is resolved from; a lock with other inputs is stale."""

    #: Python major.minor of the venv, or None when the variant installs nothing with pip
    python: str | None = None
    platform: str | None = None
    #: the variant's own requirements (TensorFlow's first, then the spec's), in order
    requirements: tuple[str, ...] = ()
    index_url: str | None = None
    #: distribution packages the variant's own package-manager step asks for
    os_packages: tuple[str, ...] = ()
    #: ``sha256:`` of the parent variant's lock file, None without a locked parent
    parent: str | None = None
    #: the base this variant starts from (an image reference or ``bootstrap:<suite>``)
    base: str | None = None

    def as_toml(self) -> dict[str, Any]:
        """The ``[tool.hepml.inputs]`` table."""
        out: dict[str, Any] = {
            "requirements": list(self.requirements),
            "os-packages": list(self.os_packages),
        }
        optional = {
            "python": self.python,
            "platform": self.platform,
            "index-url": self.index_url,
            "parent": self.parent,
            "base": self.base,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> Inputs:
        """Read a ``[tool.hepml.inputs]`` table."""
        return cls(
            python=table.get("python"),
            platform=table.get("platform"),
            requirements=tuple(table.get("requirements", ())),
            index_url=table.get("index-url"),
            os_packages=tuple(table.get("os-packages", ())),
            parent=table.get("parent"),
            base=table.get("base"),
        )


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One file pip may install for a package: a wheel or the sdist."""

    url: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Package:
    """One locked Python distribution."""

    name: str
    version: str
    marker: str | None = None
    files: tuple[Artifact, ...] = ()


@dataclass(frozen=True, kw_only=True)
class OsLock:
    """The locked distribution packages of a variant (its ancestors' included)."""

    manager: str | None = None
    #: name → exact version; empty when not resolved
    packages: tuple[tuple[str, str], ...] = ()
    resolved: bool = False
    #: where they were resolved, or why they could not be
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class BaseLock:
    """The locked base image."""

    kind: str = "none"  # image | bootstrap | none
    ref: str | None = None
    digest: str | None = None
    packages: tuple[tuple[str, str], ...] = ()
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Lock:
    """One variant's lock file, read."""

    spec: str
    variant: str
    inputs: Inputs
    packages: tuple[Package, ...] = ()
    os: OsLock = field(default_factory=OsLock)
    base: BaseLock = field(default_factory=BaseLock)
    #: why the Python part could not be resolved ("" when it was, or when there is none)
    python_note: str = ""
    #: the file's bytes and their ``sha256:`` digest (what the image's content digest includes)
    raw: bytes = b""

    @property
    def sha256(self) -> str:
        """``sha256:`` of the file."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    def pins(self) -> dict[str, str]:
        """Normalized name → version of every Python distribution."""
        return {normalize(p.name): p.version for p in self.packages}


def _packages(data: Mapping[str, Any]) -> tuple[Package, ...]:
    out = []
    for index, item in enumerate(data.get("packages", [])):
        if not isinstance(item, dict) or "name" not in item:
            raise LockProblem(f"packages[{index}] has no name")
        if "version" not in item:
            raise LockProblem(f"package {item['name']} has no exact version")
        files = []
        entries = [*item.get("wheels", []), *([item["sdist"]] if "sdist" in item else [])]
        for entry in entries:
            sha = (entry.get("hashes") or {}).get("sha256")
            if not sha:
                raise LockProblem(f"package {item['name']}: a file without a sha256 hash")
            files.append(Artifact(url=entry.get("url") or entry.get("name", ""), sha256=sha))
        if not files:
            raise LockProblem(f"package {item['name']} {item['version']} has no hashed file")
        out.append(
            Package(
                name=item["name"],
                version=str(item["version"]),
                marker=item.get("marker"),
                files=tuple(files),
            )
        )
    return tuple(sorted(out, key=lambda p: normalize(p.name)))


def parse(raw: bytes) -> Lock:
    """Read a lock file (a ``pylock.toml`` with a ``[tool.hepml]`` table)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockProblem(f"not a TOML file: {exc}") from None
    version = str(data.get("lock-version", ""))
    if not version.startswith("1."):
        raise LockProblem(f"lock-version {version or '(none)'} is not a PEP 751 lock 1.x")
    tool = (data.get("tool") or {}).get("hepml")
    if not isinstance(tool, dict):
        raise LockProblem("no [tool.hepml] table: not written by `hepml-images lock`")
    if tool.get("format") != FORMAT:
        raise LockProblem(f"[tool.hepml] format {tool.get('format')} is not {FORMAT}")
    os_table = tool.get("os") or {}
    base_table = tool.get("base") or {}
    return Lock(
        spec=str(tool.get("spec", "")),
        variant=str(tool.get("variant", "")),
        inputs=Inputs.from_toml(tool.get("inputs") or {}),
        packages=_packages(data),
        python_note=str(tool.get("python-note", "")),
        os=OsLock(
            manager=os_table.get("manager"),
            packages=tuple(sorted((os_table.get("packages") or {}).items())),
            resolved=bool(os_table.get("resolved", False)),
            note=str(os_table.get("note", "")),
        ),
        base=BaseLock(
            kind=str(base_table.get("kind", "none")),
            ref=base_table.get("ref"),
            digest=base_table.get("digest"),
            packages=tuple(sorted((base_table.get("packages") or {}).items())),
            note=str(base_table.get("note", "")),
        ),
        raw=raw,
    )


_MARK = "# Written by `hepml-images lock`"


def python_text(lock: Lock) -> str:
    """The PEP 751 part of a lock file (what uv wrote), without ``[tool.hepml]``."""
    return lock.raw.decode().split(f"\n{_MARK}", 1)[0].rstrip("\n") + "\n"


_EMPTY_PYLOCK = 'lock-version = "1.0"\ncreated-by = "hepml-images"\npackages = []\n'


def dump(  # noqa: PLR0913 - keyword-only: one per part of the file
    *,
    spec: str,
    variant: str,
    inputs: Inputs,
    pylock: str | None,
    os: OsLock,
    base: BaseLock,
    python_note: str = "",
) -> bytes:
    """A lock file: ``pylock`` (uv's PEP 751 text, or an empty lock) plus ``[tool.hepml]``."""
    text = (pylock or _EMPTY_PYLOCK).rstrip("\n") + "\n"
    tool: dict[str, Any] = {"format": FORMAT, "spec": spec, "variant": variant}
    if python_note:
        tool["python-note"] = python_note
    tool["inputs"] = inputs.as_toml()
    os_table: dict[str, Any] = {"resolved": os.resolved, "note": os.note}
    if os.manager:
        os_table["manager"] = os.manager
    os_table["packages"] = dict(os.packages)
    tool["os"] = os_table
    base_table: dict[str, Any] = {"kind": base.kind, "note": base.note}
    if base.ref:
        base_table["ref"] = base.ref
    if base.digest:
        base_table["digest"] = base.digest
    if base.packages:
        base_table["packages"] = dict(base.packages)
    tool["base"] = base_table
    header = f"\n{_MARK}; `hepml-images lock --check` says what moved upstream.\n"
    out = text + header + tomli_w.dumps({"tool": {"hepml": tool}})
    parse(out.encode())  # what is written must read back
    return out.encode()


def stale(lock: Lock, inputs: Inputs) -> list[str]:
    """What changed between the inputs a lock was resolved from and ``inputs`` (empty: fresh)."""
    old = lock.inputs
    changes: list[str] = []
    for label, before, after in (
        ("Python", old.python, inputs.python),
        ("platform", old.platform, inputs.platform),
        ("index-url", old.index_url, inputs.index_url),
        ("base", old.base, inputs.base),
    ):
        if before != after:
            changes.append(f"{label} {before or '(none)'} -> {after or '(none)'}")
    for label, before_items, after_items in (
        ("requirement", old.requirements, inputs.requirements),
        ("OS package", old.os_packages, inputs.os_packages),
    ):
        gone = [r for r in before_items if r not in after_items]
        new = [r for r in after_items if r not in before_items]
        changes.extend(f"{label} {r} added" for r in new)
        changes.extend(f"{label} {r} removed" for r in gone)
    if old.parent != inputs.parent:
        if old.parent and inputs.parent:
            changes.append("the parent's lock changed")
        elif inputs.parent:
            changes.append("the parent has a lock now")
        else:
            changes.append("the parent's lock is gone")
    return changes


def requirements_text(
    lock: Lock, *, skip: Mapping[str, str] | None = None, source: str | None = None
) -> bytes:
    """A hash-locked requirements file of the lock's packages (``pip --require-hashes``).

    ``skip``: normalized name → version already installed (the parent's lock); those are left
    out, so a child installs only what its parent does not have.
    """
    skip = skip or {}
    lines = [
        (
            f"# hash-locked from {source or lock_name(lock.variant)} ({lock.spec}); installed with"
            " --no-deps --require-hashes"
        )
    ]
    for package in lock.packages:
        if skip.get(normalize(package.name)) == package.version:
            continue
        marker = f" ; {package.marker}" if package.marker else ""
        hashes = sorted({f.sha256 for f in package.files})
        lines.append(f"{package.name}=={package.version}{marker} \\")
        lines.extend(
            f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "")
            for i, h in enumerate(hashes)
        )
    return ("\n".join(lines) + "\n").encode()


def new_os_packages(lock: Lock, parent: Lock | None) -> tuple[tuple[str, str], ...]:
    """The locked OS packages this variant installs itself (not in its parent's lock)."""
    before = dict(parent.os.packages) if parent is not None else {}
    return tuple((n, v) for n, v in lock.os.packages if before.get(n) != v)


def versions(lock: Lock, names: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    """The locked versions of ``names`` that the lock holds (e.g. CUDA and cuDNN wheels).

    What the labels of an image should say about CUDA/cuDNN once they come from the lock.
    """
    pins = lock.pins()
    return {name: pins[normalize(name)] for name in names if normalize(name) in pins}


def read_pylock(raw: bytes) -> tuple[Package, ...]:
    """The packages of any PEP 751 ``pylock.toml`` (given as a spec's ``pip.file``)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockProblem(f"not a TOML file: {exc}") from None
    return _packages(data)


def requirement_lines(content: bytes) -> list[str]:
    """The requirement lines of a plain requirements file (no options, no comments)."""
    out = []
    for raw in content.decode("utf-8", errors="replace").splitlines():
        line = re.sub(r"(?:^|\s)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def is_pylock_name(name: str) -> bool:
    """Whether a file name is a PEP 751 lock's (``pylock.toml``, ``pylock.NAME.toml``)."""
    return re.fullmatch(r"pylock(\.[^.]+)?\.toml", PurePath(name).name) is not None
