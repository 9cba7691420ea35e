"""Real Apptainer for tests and benchmarks, in a container made from Debian packages.

Apptainer 1.4 is packaged in Debian unstable but needs a newer libc than Debian 12 (and
Ubuntu 24.04) ship, so it runs in a container whose root filesystem mmdebstrap makes from Debian
unstable packages: no image registry is needed. The image is cached in the engine under a tag
made from its inputs (suite, mirror, package list, hooks, this module's ``VERSION``), so the
second session finds it at once.

``install(engine, DIR)`` makes (or finds) the image and writes two commands into ``DIR``:

- ``DIR/apptainer`` runs ``apptainer ARGS…`` the way a grid job does: as an unprivileged user
  (the caller's uid; uid 1000 when the caller is root, because Apptainer as root asks for
  capabilities a container here cannot have), through a user namespace (``seccomp=unconfined``;
  no capability is added) with ``/dev/fuse`` passed in and made usable by that user, so
  squashfuse mounts the SIF. Host paths named in the arguments (``*.sif``/``*.def`` files, the
  target of ``build``/``pull``) and in ``HEPML_APPTAINER_BIND`` (``:``-separated) are
  bind-mounted at the same path; a target directory must be writable by that user.
  ``apptainer build`` goes to the root mode below (builds work as root only here).
  ``APPTAINER_*`` variables are passed through (``APPTAINER_DOCKER_USERNAME``…), and the
  variables ``HEPML_APPTAINER_ENV`` names (``,``-separated), as a host environment would be.
  Host network, so a registry on the host's loopback is reachable.
- ``DIR/apptainer-root`` runs it as root with ``root default capabilities = no`` (set in the
  image) and the engine's socket: ``apptainer build X.sif docker-daemon:IMAGE`` and definition
  file builds with ``%post`` (Apptainer runs ``%post`` in its own namespaces, as root).

Both are small generated Python scripts that call the ``docker`` client (the project's Python
talks to the engine through ``hepml_images.engine`` only; this image is loaded through it).

Command line: ``python -m hepml_images.devtools.apptainer DIR`` prints the wrapper's path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hepml_images.build.images import write_archive
from hepml_images.errors import HepmlError
from hepml_images.hashing import sha256_file

if TYPE_CHECKING:
    from hepml_images.engine import Engine

#: Bump when the image or the wrappers change in a way the inputs below do not show.
VERSION = 1
SUITE = "sid"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("apptainer", "fuse3", "squashfuse", "fuse2fs", "tzdata", "ca-certificates")
ENTRY = "/usr/local/bin/hepml-apptainer-entry"
REPOSITORY = "hepml-dev/apptainer"
INPUTS_LABEL = "io.hepml.dev.apptainer.inputs"

#: Runs as root in the container, then drops to HEPML_UID (or stays root for ``root``).
_ENTRY_SCRIPT = r"""#!/bin/sh
# hepml-images: make /dev/fuse usable by the calling user, give it a passwd entry, drop to it.
set -eu
if [ "${HEPML_UID:-0}" = 0 ]; then exec apptainer "$@"; fi
[ -e /dev/fuse ] && chmod 0666 /dev/fuse
if ! getent passwd "$HEPML_UID" >/dev/null; then
    echo "hepml:x:$HEPML_UID:$HEPML_UID:hepml:/home/hepml:/bin/sh" >> /etc/passwd
    echo "hepml:x:$HEPML_UID:" >> /etc/group
fi
home=$(getent passwd "$HEPML_UID" | cut -d: -f6)
mkdir -p "$home" && chown "$HEPML_UID:$HEPML_UID" "$home"
user=$(getent passwd "$HEPML_UID" | cut -d: -f1)
export HOME="$home" USER="$user" LOGNAME="$user"
exec setpriv --reuid="$HEPML_UID" --regid="$HEPML_UID" --clear-groups apptainer "$@"
"""

_HOOKS = (
    (
        'sed -i "s/^root default capabilities = .*/root default capabilities = no/"'
        ' "$1/etc/apptainer/apptainer.conf"'
    ),
    'rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/* "$1/etc/resolv.conf"',
)


class ApptainerUnavailable(HepmlError):  # noqa: N818 - reads as the sentence it reports
    """The Apptainer image could not be made here."""


def mmdebstrap_argv(rootfs: Path, entry: Path) -> list[str]:
    """The command that writes the image's root filesystem."""
    hooks = [
        *_HOOKS,
        f'install -m 0755 {entry} "$1{ENTRY}"',
    ]
    return [
        "mmdebstrap",
        "--variant=apt",
        '--aptopt=Acquire::Check-Valid-Until "false"',
        "--include=" + ",".join(PACKAGES),
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        str(rootfs),
        MIRROR,
    ]


def inputs_digest() -> str:
    """What the image is made from; its tag and label."""
    inputs = {
        "version": VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": sorted(PACKAGES),
        "hooks": list(_HOOKS),
        "entry": _ENTRY_SCRIPT,
    }
    raw = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def image_ref() -> str:
    """The image's tag: the repository and the first 16 hex digits of its inputs."""
    return f"{REPOSITORY}:{inputs_digest()[:16]}"


def ensure_image(engine: Engine, *, log: bool = True) -> str:
    """The Apptainer image's reference: found by its inputs, else made with mmdebstrap."""
    ref = image_ref()
    if engine.image(ref) is not None:
        return ref
    if shutil.which("mmdebstrap") is None:
        raise ApptainerUnavailable(
            "real Apptainer needs mmdebstrap to make its image",
            hint="apt-get install mmdebstrap debian-archive-keyring",
        )
    with tempfile.TemporaryDirectory(prefix="hepml-apptainer-") as tmp:
        rootfs, entry, archive = (Path(tmp) / n for n in ("rootfs.tar", "entry.sh", "image.tar"))
        entry.write_text(_ENTRY_SCRIPT, encoding="utf-8")
        done = subprocess.run(  # noqa: S603 - fixed argv
            mmdebstrap_argv(rootfs, entry),
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise ApptainerUnavailable(
                "mmdebstrap could not make the Apptainer image: "
                + done.stderr.decode(errors="replace").strip()[-800:]
            )
        if log:
            sys.stderr.write(f"made the Apptainer root filesystem for {ref}\n")
        diff_id = "sha256:" + sha256_file(rootfs)
        config = {
            "architecture": "amd64",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Entrypoint": [ENTRY],
                "Labels": {INPUTS_LABEL: "sha256:" + inputs_digest()},
            },
            "os": "linux",
            "rootfs": {"diff_ids": [diff_id], "type": "layers"},
        }
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        write_archive(archive, rootfs, raw, [ref])
        rootfs.unlink()
        engine.load(archive)
    return ref


_WRAPPER = r'''#!{python}
"""Generated by hepml_images.devtools.apptainer: `apptainer` from {ref} ({mode})."""
import os
import sys

IMAGE = {ref!r}
ROOT = {root!r}


def _abs(path):
    return os.path.abspath(path)


def named(args):
    """Indexes of the arguments that are host paths: SIF and definition files, targets."""
    positional = [i for i, a in enumerate(args) if not a.startswith("-")]
    command = args[positional[0]] if positional else ""
    out = [i for i, a in enumerate(args) if a.endswith((".sif", ".def"))]
    if command in ("build", "pull") and len(positional) > 1:
        out.append(positional[1])
    if command == "build" and len(positional) > 2 and os.path.exists(args[positional[2]]):
        out.append(positional[2])
    return sorted(i for i in set(out) if "://" not in args[i] and ":" not in args[i][:10])


def binds(args):
    """Host paths the arguments name, to mount at the same path."""
    out = []
    named_paths = [args[i] for i in named(args)]
    named_paths += [p for p in os.environ.get("HEPML_APPTAINER_BIND", "").split(":") if p]
    for path in named_paths:
        path = _abs(path)
        if os.path.exists(path):
            out.append(path)
        elif os.path.isdir(os.path.dirname(path)):
            out.append(os.path.dirname(path))
    return sorted(set(out))


def main():
    args = sys.argv[1:]
    positional = [a for a in args if not a.startswith("-")]
    root = ROOT or positional[:1] == ["build"]  # builds here work as root only
    uid = 0 if root else (os.getuid() or 1000)
    argv = ["docker", "run", "--rm", "--network", "host", "--security-opt", "seccomp=unconfined",
            "-e", "HEPML_UID=%d" % uid, "-w", "/"]
    if sys.stdin.isatty():
        argv += ["-it"]
    if root:
        argv += ["-v", "/var/run/docker.sock:/var/run/docker.sock"]
    elif os.path.exists("/dev/fuse"):
        argv += ["--device", "/dev/fuse"]
    passed = [n for n in os.environ.get("HEPML_APPTAINER_ENV", "").split(",") if n]
    for name in os.environ:
        if name.startswith(("APPTAINER_", "SINGULARITY_")) or name in passed:
            argv += ["-e", name]
    for path in binds(args):
        argv += ["-v", "%s:%s" % (path, path)]
    for i in named(args):
        args[i] = _abs(args[i])
    argv += [IMAGE, *args]
    os.execvp("docker", argv)


if __name__ == "__main__":
    main()
'''


def write_wrappers(ref: str, directory: Path) -> tuple[Path, Path]:
    """Write ``apptainer`` (unprivileged) and ``apptainer-root`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, root in (("apptainer", False), ("apptainer-root", True)):
        path = directory / name
        mode = "as root, conversion and %post builds" if root else "as an unprivileged user"
        path.write_text(
            _WRAPPER.format(python=sys.executable, ref=ref, root=root, mode=mode),
            encoding="utf-8",
        )
        path.chmod(0o755)
        paths.append(path)
    return paths[0], paths[1]


def install(engine: Engine, directory: Path) -> tuple[Path, Path]:
    """Make or find the image; write the two commands; return their paths."""
    return write_wrappers(ensure_image(engine), directory)


def version(command: Path) -> str:
    """``apptainer --version`` through a wrapper, e.g. ``apptainer version 1.4.5``."""
    done = subprocess.run(  # noqa: S603 - our own wrapper
        [str(command), "--version"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Install the wrappers into DIR; print the unprivileged one's path."""
    from hepml_images.engine import connect  # noqa: PLC0415 - only the command line needs it

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m hepml_images.devtools.apptainer DIR\n")
        return 2
    engine = connect()
    try:
        user, _root = install(engine, Path(args[0]))
    except HepmlError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        engine.close()
    sys.stdout.write(f"{user}\n")
    sys.stderr.write(f"{version(user)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # pragma: no cover
