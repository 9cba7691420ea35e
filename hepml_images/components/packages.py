"""Package-manager command lines per distribution family. Pure.

Each function returns shell commands (tuples of strings joined with ``&&`` by the writers) in
which every package name has passed ``spec.values.package`` and is quoted once more with
``shlex.quote``. Caches are removed in the same command, so no layer keeps them; so are the
files a package manager writes that record when it ran rather than what it installed (its logs,
ldconfig's cache of file times, backups of its databases): see ``leftovers`` and
docs/reproducibility.md.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hepml_images.spec.model import Family

#: CentOS 7 reached end of life in June 2024; its mirrors moved to vault.centos.org.
EL7_VAULT = "http://vault.centos.org/7.9.2009"
#: EPEL 7 moved to the Fedora archive at the same time.
EL7_EPEL_ARCHIVE = "https://archives.fedoraproject.org/pub/archive/epel/7"


def _words(packages: Iterable[str]) -> str:
    return " ".join(shlex.quote(p) for p in sorted(set(packages)))


#: What apt, dpkg and their triggers leave that depends on when they ran, not on what they
#: installed: logs with wall-clock times (dpkg, update-alternatives, apt's history, terminal and
#: planner logs), ldconfig's aux-cache (file times and inode numbers), dpkg's and debconf's
#: ``*-old`` backups (the database as it was before this step), apt's lists and its package
#: cache. Measured by building the same step twice (docs/reproducibility.md).
_LEFTOVERS_APT = (
    "/var/lib/apt/lists/*",
    "/var/log/dpkg.log",
    "/var/log/alternatives.log",
    "/var/log/apt/*",
    "/var/cache/ldconfig/aux-cache",
    "/var/lib/dpkg/*-old",
    "/var/cache/debconf/*-old",
)

#: The same family for dnf (el9) and yum (el7), not measured here (docs/reproducibility.md):
#: their logs, their transaction-history databases (wall-clock times of every transaction),
#: the rpm database's Berkeley DB region files (el7) and ldconfig's aux-cache.
_LEFTOVERS_DNF = (
    "/var/cache/dnf",
    "/var/log/dnf.log",
    "/var/log/dnf.librepo.log",
    "/var/log/dnf.rpm.log",
    "/var/log/hawkey.log",
    "/var/lib/dnf/history.sqlite*",
    "/var/cache/ldconfig/aux-cache",
)
_LEFTOVERS_YUM = (
    "/var/cache/yum",
    "/var/log/yum.log",
    "/var/lib/yum/history",
    "/var/lib/rpm/__db.*",
    "/var/cache/ldconfig/aux-cache",
)


def leftovers(family: Family) -> tuple[str, ...]:
    """The command that removes what a package manager run leaves besides the packages.

    It comes last in every step that runs the package manager (``install``, ``toolchain``).
    The globs are unquoted on purpose: the shell expands them; ``rm -f`` ignores a pattern
    that matched nothing.
    """
    paths: tuple[str, ...]
    if family in {"debian", "ubuntu"}:
        paths = _LEFTOVERS_APT
    elif family == "el9":
        paths = _LEFTOVERS_DNF
    else:
        paths = _LEFTOVERS_YUM
    return ("rm -rf " + " ".join(paths),)


def install(family: Family, packages: Iterable[str]) -> tuple[str, ...]:
    """Commands that install ``packages`` and leave no package-manager cache or log behind."""
    names = _words(packages)
    if family in {"debian", "ubuntu"}:
        return (
            "apt-get update",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {names}",
            "apt-get clean",
            *leftovers(family),
        )
    if family == "el9":
        return (
            f"dnf install -y --setopt=install_weak_deps=False --setopt=tsflags=nodocs {names}",
            "dnf clean all",
            *leftovers(family),
        )
    return (
        f"yum install -y --setopt=tsflags=nodocs {names}",
        "yum clean all",
        *leftovers(family),
    )


def pinned(family: Family, name: str, version: str) -> str:
    """A package pinned to an exact version: ``name=version`` (apt), ``name-version`` (yum/dnf)."""
    return f"{name}={version}" if family in {"debian", "ubuntu"} else f"{name}-{version}"


def el7_vault() -> tuple[str, ...]:
    """Point CentOS 7's yum repositories at vault.centos.org (mirrorlist.centos.org is gone)."""
    return (
        (
            "sed -i -e 's/^mirrorlist=/#mirrorlist=/' "
            "-e 's|^#\\?baseurl=http://mirror.centos.org/centos/\\$releasever"
            f"|baseurl={EL7_VAULT}|' "
            "/etc/yum.repos.d/CentOS-*.repo"
        ),
    )


def epel(family: Family) -> tuple[str, ...]:
    """Enable EPEL (HDF5 lives there on EL); on EL7 point it at the archive."""
    if family == "el9":
        return ("dnf install -y epel-release", "dnf clean all")
    if family == "el7":
        return (
            "yum install -y epel-release",
            (
                "sed -i -e 's/^metalink=/#metalink=/' "
                f"-e 's|^#\\?baseurl=.*/pub/epel/7|baseurl={EL7_EPEL_ARCHIVE}|' "
                "/etc/yum.repos.d/epel*.repo"
            ),
            "yum clean all",
        )
    return ()


def nvidia_repo_name(family: Family, release: str | None) -> str:
    """NVIDIA's CUDA repository name for a distribution (debian12, ubuntu2204, rhel9 …)."""
    if family == "el7":
        return "rhel7"
    if family == "el9":
        return "rhel9"
    numbers = {
        "bullseye": "debian11",
        "bookworm": "debian12",
        "focal": "ubuntu2004",
        "jammy": "ubuntu2204",
        "noble": "ubuntu2404",
    }
    return numbers.get(release or "", "debian12" if family == "debian" else "ubuntu2204")


#: A C compiler, pkg-config and the Python headers: what ``pip --no-binary`` builds need.
_TOOLCHAIN_APT = ("gcc", "libc6-dev", "pkg-config", "python3-dev")


def toolchain(family: Family, interpreter: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Commands that install a build toolchain, and commands that remove it again.

    Only packages that were not installed before are installed and removed, so a compiler the
    spec asked for stays. Both halves belong in the same step: no layer keeps the toolchain.
    """
    deps_file = "/tmp/hepml-build-deps"  # noqa: S108 - written and removed within one step
    each = f"xargs -r -a {deps_file}"
    if family in {"debian", "ubuntu"}:
        names = " ".join(_TOOLCHAIN_APT)
        probe = "dpkg -s"
        apt = "env DEBIAN_FRONTEND=noninteractive apt-get"
        install_cmds: tuple[str, ...] = (
            "apt-get update",
            f"{each} {apt} install -y --no-install-recommends",
        )
        remove: tuple[str, ...] = (
            f"{each} {apt} purge -y --auto-remove",
            "apt-get clean",
            *leftovers(family),
            f"rm -f {deps_file}",
        )
    else:
        manager = "dnf" if family == "el9" else "yum"
        devel = f"{shlex.quote(interpreter)}-devel" if interpreter != "python" else "python3-devel"
        pkgconfig = "pkgconf-pkg-config" if family == "el9" else "pkgconfig"
        names = f"gcc {pkgconfig} {devel}"
        probe = "rpm -q"
        install_cmds = (f"{each} {manager} install -y",)
        remove = (
            f"{each} {manager} remove -y",
            f"{manager} clean all",
            *leftovers(family),
            f"rm -f {deps_file}",
        )
    select = f'for p in {names}; do {probe} "$p" >/dev/null 2>&1 || echo "$p"; done > {deps_file}'

    return (select, *install_cmds), remove
