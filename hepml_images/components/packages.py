"""Package-manager command lines per distribution family. Pure.

Each function returns shell commands (tuples of strings joined with ``&&`` by the writers) in
which every package name has passed ``spec.values.package`` and is quoted once more with
``shlex.quote``. Caches are removed in the same command, so no layer keeps them.
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


def install(family: Family, packages: Iterable[str]) -> tuple[str, ...]:
    """Commands that install ``packages`` and leave no package-manager cache behind."""
    names = _words(packages)
    if family in {"debian", "ubuntu"}:
        return (
            "apt-get update",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {names}",
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        )
    if family == "el9":
        return (
            f"dnf install -y --setopt=install_weak_deps=False --setopt=tsflags=nodocs {names}",
            "dnf clean all",
            "rm -rf /var/cache/dnf",
        )
    return (
        f"yum install -y --setopt=tsflags=nodocs {names}",
        "yum clean all",
        "rm -rf /var/cache/yum",
    )


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
            "rm -rf /var/lib/apt/lists/*",
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
            f"rm -rf /var/cache/{manager}",
            f"rm -f {deps_file}",
        )
    select = f'for p in {names}; do {probe} "$p" >/dev/null 2>&1 || echo "$p"; done > {deps_file}'

    return (select, *install_cmds), remove
