"""The Apptainer/Singularity layout added to an OCI image's root filesystem (pure).

In: the image configuration (Env, Entrypoint, Cmd, Labels). Out: the entries, in creation order,
that make the flat root filesystem one that ``apptainer exec|run|shell|inspect`` understands and
that grid sites can bind into:

- ``/.singularity.d/actions/{exec,run,shell,start,test}``: load the environment, then act;
- ``/.singularity.d/env/``: ``01-base.sh``, ``10-docker2singularity.sh`` (the image's Env: PATH as
  the image has it, every other variable only where the host has not set it, as Apptainer's own
  conversion does), ``90-environment.sh``, ``95-apps.sh``, ``99-base.sh`` (``/.singularity.d/libs``,
  where ``--nv`` binds the host's driver libraries, on the library path), ``99-runtimevars.sh``;
- ``/.singularity.d/runscript`` (ENTRYPOINT then the arguments or CMD, as ``docker run``),
  ``startscript``, ``labels.json`` (what ``apptainer inspect`` shows) and the empty ``libs/``;
- the compatibility links ``/singularity``, ``/.exec``, ``/.run``, ``/.shell``, ``/.test`` and
  ``/environment``, the usual mount points, and ``/srv`` and ``/cvmfs`` for grid jobs.

``install`` writes the entries into a directory (the one side effect here): existing image files
are kept except the ones Apptainer owns, and every entry gets a fixed time so that the same image
gives the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from hepml_images.resources import data_path

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

SINGULARITY_D = ".singularity.d"
#: Directories every image gets; /srv and /cvmfs are where grid jobs bind their work and CVMFS.
MOUNT_POINTS = (
    "dev",
    "proc",
    "sys",
    "tmp",
    "var",
    "var/tmp",
    "root",
    "home",
    "etc",
    "srv",
    "cvmfs",
)
ACTIONS = ("exec", "run", "shell", "start", "test")
ENV_SCRIPTS = ("01-base.sh", "90-environment.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh")
LINKS = (
    ("singularity", ".singularity.d/runscript"),
    (".exec", ".singularity.d/actions/exec"),
    (".run", ".singularity.d/actions/run"),
    (".shell", ".singularity.d/actions/shell"),
    (".test", ".singularity.d/actions/test"),
    ("environment", ".singularity.d/env/90-environment.sh"),
)
#: Empty files an image must have for Apptainer to bind the host's over them.
BIND_TARGETS = ("etc/hosts", "etc/resolv.conf")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Kind(str, Enum):
    """What an entry is."""

    directory = "directory"
    file = "file"
    link = "link"


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One path of the layout, relative to the root filesystem."""

    path: str
    kind: Kind
    mode: int = 0o755
    content: bytes = b""
    target: str = ""
    #: replace what the image has at this path (Apptainer's own files); else keep the image's
    replace: bool = True


def _template(name: str) -> str:
    return (data_path("templates") / "singularity.d" / name).read_text(encoding="utf-8")


def _render(name: str, **values: Any) -> bytes:  # noqa: ANN401 - template values of any type
    from hepml_images.render.writers import environment  # noqa: PLC0415 - Jinja on demand

    return environment().get_template(f"singularity.d/{name}").render(**values).encode()


def environment_pairs(env: Sequence[str]) -> list[tuple[str, str]]:
    """``KEY=value`` entries of an image config as pairs; names a shell cannot set are dropped."""
    pairs = []
    for item in env:
        name, _, value = item.partition("=")
        if _NAME.match(name):
            pairs.append((name, value))
    return pairs


def labels_json(labels: Mapping[str, str]) -> bytes:
    """``labels.json``: the image's labels, sorted, as ``apptainer inspect`` reads them."""
    return (json.dumps(dict(labels), indent=2, sort_keys=True) + "\n").encode()


def entries(config: Mapping[str, Any]) -> list[Entry]:
    """The layout for an image configuration (the ``config`` object of an OCI image config)."""
    env = environment_pairs(config.get("Env") or [])
    result = [Entry(path=d, kind=Kind.directory, replace=False) for d in MOUNT_POINTS]
    result += [
        Entry(path=d, kind=Kind.directory, replace=False)
        for d in (SINGULARITY_D, *(f"{SINGULARITY_D}/{sub}" for sub in ("actions", "env", "libs")))
    ]
    result += [Entry(path=p, kind=Kind.file, mode=0o644, replace=False) for p in BIND_TARGETS]
    result += [
        Entry(
            path=f"{SINGULARITY_D}/actions/{name}",
            kind=Kind.file,
            content=_template(name).encode(),
        )
        for name in ACTIONS
    ]
    result += [
        Entry(path=f"{SINGULARITY_D}/env/{name}", kind=Kind.file, content=_template(name).encode())
        for name in ENV_SCRIPTS
    ]
    result += [
        Entry(
            path=f"{SINGULARITY_D}/env/10-docker2singularity.sh",
            kind=Kind.file,
            content=_render("10-docker2singularity.sh.j2", env=env),
        ),
        Entry(
            path=f"{SINGULARITY_D}/runscript",
            kind=Kind.file,
            content=_render(
                "runscript.j2",
                entrypoint=list(config.get("Entrypoint") or []),
                cmd=list(config.get("Cmd") or []),
            ),
        ),
        Entry(
            path=f"{SINGULARITY_D}/startscript",
            kind=Kind.file,
            content=_template("startscript").encode(),
        ),
        Entry(
            path=f"{SINGULARITY_D}/labels.json",
            kind=Kind.file,
            mode=0o644,
            content=labels_json(config.get("Labels") or {}),
        ),
    ]
    result += [Entry(path=link, kind=Kind.link, target=target) for link, target in LINKS]
    return result


def _inside(root: Path, path: Path) -> bool:
    """``path``'s parent, resolved, is still inside ``root`` (no link leads out of the image)."""
    parent = os.path.realpath(path.parent)
    base = os.path.realpath(root)
    return parent == base or parent.startswith(base + os.sep)


def install(root: Path, layout: Sequence[Entry], *, epoch: int) -> None:
    """Write ``layout`` into the root filesystem at ``root``.

    Each entry written gets the time ``epoch``; directories that were already there keep their
    times (restored after their contents changed), so a rerun on the same image gives the same
    tree. A path the image already has is kept unless the entry replaces it; a link is made only
    where the image has nothing or a link.
    """
    touched: dict[Path, tuple[int, int]] = {}

    def remember(directory: Path) -> None:
        if directory not in touched and directory.is_dir():
            st = directory.lstat()
            touched[directory] = (st.st_atime_ns, st.st_mtime_ns)

    written: list[Path] = []
    for entry in layout:
        path = root / entry.path
        if not _inside(root, path):
            raise ValueError(f"/{entry.path} would be written outside the image through a link")
        remember(path.parent)
        exists = path.is_symlink() or path.exists()
        if entry.kind is Kind.directory:
            if path.is_symlink() or path.is_dir():
                continue  # the image's own directory (or a link to one) is what grid jobs get
            if exists:
                path.unlink()
            path.mkdir(mode=entry.mode)
            path.chmod(entry.mode)
        elif entry.kind is Kind.file:
            if exists and not entry.replace:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif exists:
                path.unlink()
            path.write_bytes(entry.content)
            path.chmod(entry.mode)
        else:
            if exists and not path.is_symlink():
                continue  # an image file where Apptainer wants a link: Apptainer keeps it too
            if exists:
                path.unlink()
            path.symlink_to(entry.target)
        written.append(path)
    for path in written:
        os.utime(path, ns=(epoch * 10**9, epoch * 10**9), follow_symlinks=False)
    for directory, times in touched.items():
        if directory not in written:
            os.utime(directory, ns=times, follow_symlinks=False)
