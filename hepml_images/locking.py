"""``hepml-images lock``: resolve every variant's packages and write its lock file.

- **Python**: ``uv pip compile --format pylock.toml`` on the host, for the image's Python
  (``--python-version``) and platform (``--python-platform x86_64-manylinux_<its glibc>``). A
  child is resolved together with everything its parent's lock holds (as ``name==version``
  requirements), so its lock is the whole venv and agrees with what the parent installed; its
  build installs only what the parent's lock does not hold, with ``--no-deps``.
- **OS packages** (apt families): ``apt-get install --simulate`` of every package the chain of
  ``extends`` asks for, inside the image at the root of the chain (a throwaway container); its
  ``Inst`` lines give the exact versions. A bootstrapped root is read with ``dpkg-query -W``.
  Without that image, or for yum/dnf, the lock says they are not resolved and why.
- **Base image**: its registry digest where the engine has the image with one; a bootstrapped
  base's package set. No registry is asked (none can be reached from here).

``--check`` resolves the same way and reports what moved, writing nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hepml_images import lockfile
from hepml_images.errors import HepmlError
from hepml_images.resolve import lineage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from hepml_images.resolve import ResolvedVariant

#: seconds a resolution may take (uv against PyPI, apt-get update inside a container)
TIMEOUT = 900
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")
_APT = {"debian", "ubuntu"}


class LockFailed(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """A resolution that did not succeed."""


@dataclass(frozen=True)
class Locked:
    """What ``lock`` did for one variant."""

    key: str
    path: str
    #: written | unchanged | moved (``--check``: something moved) | current (``--check``)
    state: str
    changes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: the Python packages could not be resolved (the lock says why)
    failed: bool = False


#: uv trusts its own bundled roots unless told otherwise; the system's store is what pip and
#: the rest of the machine trust (behind a TLS-intercepting proxy only it has the proxy's CA).
#: ``UV_SYSTEM_CERTS`` (uv ≥ 0.9) and ``UV_NATIVE_TLS`` (older) are the same switch.
_UV_TRUST = {"UV_SYSTEM_CERTS": "1", "UV_NATIVE_TLS": "1"}


def _uv() -> str:
    try:
        from uv import find_uv_bin  # noqa: PLC0415 - only `lock` needs uv

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise LockFailed(
                "uv is not installed", hint="pip install uv (hepml-images depends on it)"
            ) from None
        return found


def resolve_python(
    inputs: lockfile.Inputs, parent: lockfile.Lock | None
) -> tuple[str | None, tuple[str, ...]]:
    """The pylock.toml text that uv writes for the inputs with the parent's packages, and notes.

    The parent's packages are pinned to their locked versions first. When the variant's own
    requirements cannot be met with them (a child that needs an older h5py than its parent
    locked), they are resolved again by name only: the child's lock then holds other versions of
    some of its parent's packages, and its build installs those over the parent's (what an
    unlocked ``pip install`` in the child would have done); the notes name them.
    """
    if inputs.python is None:
        return None, ()
    if not inputs.requirements and parent is not None:
        return lockfile.python_text(parent), ()
    pinned = [f"{p.name}=={p.version}" for p in parent.packages] if parent else []
    text, error = _uv_compile(inputs, pinned)
    if text is not None or parent is None:
        if text is None:
            raise _unresolved(inputs, error)
        return text, ()
    text, again = _uv_compile(inputs, [p.name for p in parent.packages])
    if text is None:
        raise _unresolved(inputs, again)
    moved = lockfile.parse(
        lockfile.dump(
            spec="",
            variant="",
            inputs=inputs,
            pylock=text,
            os=lockfile.OsLock(),
            base=lockfile.BaseLock(),
        )
    ).pins()
    notes = tuple(
        f"{name} {version} (locked by the parent) is replaced by {moved[name]}"
        for name, version in sorted(parent.pins().items())
        if moved.get(name, version) != version
    )
    return text, notes


def _unresolved(inputs: lockfile.Inputs, error: str) -> LockFailed:
    return LockFailed(
        f"uv could not resolve {', '.join(inputs.requirements)} for Python"
        f" {inputs.python} on {inputs.platform}:\n{error.strip()[-2000:]}",
        hint="check the requirements (and that they exist for that Python and platform)",
    )


def _uv_compile(inputs: lockfile.Inputs, first: Sequence[str]) -> tuple[str | None, str]:
    """(pylock text, "") or (None, uv's error) for ``first`` plus the inputs' requirements."""
    with tempfile.TemporaryDirectory(prefix="hepml-lock-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("".join(f"{r}\n" for r in (*first, *inputs.requirements)))
        out = Path(tmp) / "pylock.toml"
        argv = [
            _uv(),
            "pip",
            "compile",
            str(req),
            "--format",
            "pylock.toml",
            "--python-version",
            inputs.python or "3",
            "--python-platform",
            inputs.platform or "x86_64-manylinux_2_17",
            "--no-header",
            "--quiet",
            "-o",
            str(out),
        ]
        if inputs.index_url:
            argv += ["--index-url", inputs.index_url]
        done = subprocess.run(  # noqa: S603 - argv, no shell
            argv,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env={**os.environ, **_UV_TRUST},
        )
        if done.returncode != 0:
            return None, done.stderr
        return out.read_text(), ""


def _docker(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - argv, no shell
        ["docker", *argv],  # noqa: S607 - the docker CLI from PATH, like the BuildKit backend
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _image_there(ref: str) -> bool:
    return shutil.which("docker") is not None and _docker(["image", "inspect", ref]).returncode == 0


def _dpkg_list(image: str) -> tuple[tuple[str, str], ...]:
    done = _docker(["run", "--rm", "--network=none", image, "dpkg-query", "-W"])
    if done.returncode != 0:
        raise LockFailed(f"dpkg-query in {image} failed: {done.stderr.strip()[-1000:]}")
    rows = (line.split("\t") for line in done.stdout.splitlines() if "\t" in line)
    return tuple(sorted((name.split(":", 1)[0], version) for name, version in rows))


def _simulate(image: str, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``name=version`` of everything ``apt-get install names`` would install in ``image``."""
    script = (
        "apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install"
        " --simulate -qq --no-install-recommends " + " ".join(names)
    )
    done = _docker(["run", "--rm", image, "sh", "-c", script])
    if done.returncode != 0:
        raise LockFailed(
            f"apt-get install --simulate in {image} failed: {done.stderr.strip()[-1500:]}"
        )
    found = (_INST.match(line) for line in done.stdout.splitlines())
    return tuple(sorted((m.group(1).split(":", 1)[0], m.group(2)) for m in found if m))


def upstream_moves(variant: ResolvedVariant) -> tuple[str, ...]:
    """Packages of a bootstrapped root that a fresh bootstrap would take in another version.

    The package set of a bootstrapped base is read from its image; what moved on the mirror
    since shows as the upgrades ``apt-get --simulate dist-upgrade`` would make in it.
    """
    from hepml_images import ir  # noqa: PLC0415

    if not isinstance(variant.plan.base, ir.FromBootstrap) or not _image_there(variant.image):
        return ()
    script = (
        "apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive"
        " apt-get --simulate -qq dist-upgrade"
    )
    done = _docker(["run", "--rm", variant.image, "sh", "-c", script])
    if done.returncode != 0:
        return (f"could not ask the mirror: {done.stderr.strip()[-500:]}",)
    moves = []
    for line in done.stdout.splitlines():
        found = re.match(r"^Inst (\S+) \[(\S+)\] \((\S+) ", line)
        if found:
            name, old, new = found.groups()
            moves.append(f"base {name.split(':', 1)[0]} {old} -> {new} (on the mirror)")
    return tuple(moves)


def resolve_os(variant: ResolvedVariant) -> tuple[lockfile.OsLock, lockfile.BaseLock]:
    """The OS packages of the variant's chain and its base, resolved in the chain's root image."""
    chain = lineage(variant)
    root = chain[0]
    family = variant.plan.family
    base = _base_lock(root)
    if variant is not root and variant.parent is not None and variant.parent.lock is not None:
        base = variant.parent.lock.base  # the same root: keep what was found for it
    wanted = sorted({p for v in chain for p in v.lock_inputs.os_packages})
    if family not in _APT:
        return lockfile.OsLock(
            manager="dnf" if family == "el9" else "yum",
            resolved=False,
            note=f"yum/dnf packages are not resolved by this version ({', '.join(wanted)}"
            " installed unpinned)"
            if wanted
            else "no packages asked for",
        ), base
    image = root.image
    if not _image_there(image):
        return lockfile.OsLock(
            manager="apt",
            resolved=False,
            note=f"{image} is not available here: build it, then lock again",
        ), base
    present = base.packages if base.kind == "bootstrap" else _dpkg_list(image)
    installed = dict(present)
    if wanted:
        installed.update(_simulate(image, wanted))
    return lockfile.OsLock(
        manager="apt",
        packages=tuple(sorted(installed.items())),
        resolved=True,
        note=f"apt-get install --simulate in {image} (the root of the chain)",
    ), base


def _base_lock(root: ResolvedVariant) -> lockfile.BaseLock:
    from hepml_images import ir  # noqa: PLC0415

    base = root.plan.base
    if isinstance(base, ir.FromBootstrap):
        if not _image_there(root.image):
            return lockfile.BaseLock(
                kind="bootstrap",
                ref=f"mmdebstrap {base.suite} {base.mirror}",
                note=f"{root.image} is not built here: its package set is not recorded",
            )
        return lockfile.BaseLock(
            kind="bootstrap",
            ref=f"mmdebstrap {base.suite} {base.variant} {base.mirror}",
            packages=_dpkg_list(root.image),
            note=f"package set of {root.image} (dpkg-query -W)",
        )
    if isinstance(base, ir.FromImage):
        if "@sha256:" in base.ref:
            return lockfile.BaseLock(
                kind="image", ref=base.ref, digest=base.ref.split("@", 1)[1], note="pinned in spec"
            )
        if shutil.which("docker") is not None:
            done = _docker(["image", "inspect", "--format", "{{json .RepoDigests}}", base.ref])
            digest = re.search(r"@(sha256:[0-9a-f]{64})", done.stdout)
            if done.returncode == 0 and digest:
                return lockfile.BaseLock(
                    kind="image", ref=base.ref, digest=digest.group(1), note="local image"
                )
        return lockfile.BaseLock(
            kind="image",
            ref=base.ref,
            note="not pulled here (no registry access): registry digest not recorded",
        )
    return lockfile.BaseLock()


#: lock package → the io.hepml.version.* key whose major.minor it must agree with
_LABELLED = {
    "nvidia-cuda-runtime-cu12": "cuda",
    "nvidia-cuda-runtime-cu11": "cuda",
    "nvidia-cudnn-cu12": "cudnn",
    "nvidia-cudnn-cu11": "cudnn",
}


def label_mismatch(variant: ResolvedVariant, lock: lockfile.Lock) -> tuple[str, ...]:
    """Where the locked CUDA/cuDNN wheels disagree with the versions the image is labelled with."""
    labelled = variant.version_map
    out = []
    for package, version in lockfile.versions(lock, _LABELLED).items():
        key = _LABELLED[package]
        want = labelled.get(key)
        if want is not None and ".".join(version.split(".")[:2]) != want:
            out.append(
                f"{package} {version} is locked, but the image is labelled {key} {want}"
                f" (io.hepml.version.{key})"
            )
    return tuple(out)


def _read(path: Path) -> lockfile.Lock | None:
    """A lock file as it is on disk (stale or not), or None."""
    try:
        return lockfile.parse(path.read_bytes())
    except (OSError, lockfile.LockProblem):
        return None


def compare(old: lockfile.Lock, new: lockfile.Lock) -> list[str]:
    """What moved between two locks of the same variant: versions, added, removed, digests."""
    out: list[str] = []
    for label, before, after in (
        ("", old.pins(), new.pins()),
        ("os ", dict(old.os.packages), dict(new.os.packages)),
        ("base ", dict(old.base.packages), dict(new.base.packages)),
    ):
        for name in sorted(before.keys() | after.keys()):
            a, b = before.get(name), after.get(name)
            if a != b:
                out.append(f"{label}{name} {a or '(none)'} -> {b or '(none)'}")
    if old.base.digest != new.base.digest:
        out.append(f"base digest {old.base.digest} -> {new.base.digest}")
    return out


def lock_variants(
    variants: Sequence[ResolvedVariant],
    selected: Sequence[ResolvedVariant],
    *,
    upgrade: bool,
    check: bool,
    note: Callable[[str], None],
) -> list[Locked]:
    """Lock the selected variants (and every ancestor whose lock is missing or stale)."""
    wanted = {v.key for v in selected}
    for variant in selected:
        wanted.update(a.key for a in lineage(variant) if a.lock is None)
    new: dict[str, lockfile.Lock] = {}
    results: list[Locked] = []
    for variant in variants:  # parents first
        if variant.key not in wanted:
            continue
        parent = variant.parent
        parent_lock = (new.get(parent.key) or parent.lock) if parent is not None else None
        inputs = replace(
            variant.lock_inputs, parent=parent_lock.sha256 if parent_lock is not None else None
        )
        path = Path(variant.lock_path)
        existing = variant.lock or _read(path)
        fresh = existing is not None and not lockfile.stale(existing, inputs)
        if fresh and not upgrade and not check and existing is not None:
            new[variant.key] = existing
            results.append(Locked(variant.key, str(path), "unchanged"))
            continue
        note(f"{variant.key}: resolving")
        variant_with_parent = replace(
            variant, parent=replace(parent, lock=parent_lock) if parent is not None else None
        )
        python_note = ""
        try:
            pylock, py_notes = resolve_python(inputs, parent_lock)
        except LockFailed as exc:  # the lock says so; the build installs unpinned and fails
            pylock, py_notes = None, ()
            python_note = f"not resolvable: {exc.message}"
        os_lock, base_lock = resolve_os(variant_with_parent)
        raw = lockfile.dump(
            spec=variant.spec,
            variant=variant.slug,
            inputs=inputs,
            pylock=pylock,
            os=os_lock,
            base=base_lock,
            python_note=python_note,
        )
        lock = lockfile.parse(raw)
        notes = (
            *((f"Python packages {python_note}",) if python_note else ()),
            *label_mismatch(variant, lock),
            *py_notes,
            *(n for n in (os_lock.note, base_lock.note) if n and not os_lock.resolved),
        )
        if check:
            old = existing
            changes = compare(old, lock) if old is not None else ["no lock file (or unreadable)"]
            if old is not None and lockfile.stale(old, inputs):
                changes = [*(f"stale: {c}" for c in lockfile.stale(old, inputs)), *changes]
            changes = [*changes, *upstream_moves(variant)]
            new[variant.key] = old or lock
            results.append(
                Locked(
                    variant.key, str(path), "moved" if changes else "current", tuple(changes), notes
                )
            )
            continue
        moved = tuple(compare(existing, lock)) if existing is not None else ()
        if existing is not None and existing.raw == raw:
            new[variant.key] = existing
            results.append(
                Locked(variant.key, str(path), "unchanged", (), notes, failed=bool(python_note))
            )
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        new[variant.key] = lock
        results.append(
            Locked(variant.key, str(path), "written", moved, notes, failed=bool(python_note))
        )
    return results
