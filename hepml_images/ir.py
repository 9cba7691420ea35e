"""The intermediate representation of an image: one object per instruction. Pure data.

Components turn into these steps (``hepml_images.components``), the resolver puts them into an
``ImagePlan`` (``hepml_images.resolve``), and the Dockerfile and Singularity writers
(``hepml_images.render.writers``) turn the same plan into text. Semantic differences between the
two formats are handled in the writers, in one place each. This module sits below all three and
imports nothing from the package, so resolving does not depend on rendering.

Every string in a ``Run`` command is already a safe shell word or quoted; every ``SetEnv`` value
passed ``spec.values.env_value``; every path passed ``spec.values.abs_path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias


@dataclass(frozen=True, kw_only=True)
class ContextFile:
    """A file the build context must hold (and a definition file's %files copies)."""

    name: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True, kw_only=True)
class FromImage:
    """Start from a registry image (``ref`` may carry ``@sha256:…``)."""

    ref: str


@dataclass(frozen=True, kw_only=True)
class FromBootstrap:
    """Start from a root filesystem bootstrapped from Debian packages.

    ``argv`` is the exact mmdebstrap command that writes ``rootfs`` into the build context.
    """

    suite: str
    variant: str
    mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    argv: tuple[str, ...]
    rootfs: str


@dataclass(frozen=True, kw_only=True)
class FromParent:
    """Start from the image of another spec's variant, identified by its content digest."""

    spec: str
    slug: str
    digest: str
    ref: str


Base: TypeAlias = FromImage | FromBootstrap | FromParent


@dataclass(frozen=True, kw_only=True)
class Run:
    """Shell commands run in one layer, in the working directory, joined with ``&&``.

    ``wrapper`` is an argv prefix that sets up an environment first (AnalysisBase's release
    setup); the commands then run under ``bash -c`` behind it.
    """

    title: str
    commands: tuple[str, ...]
    wrapper: tuple[str, ...] = ()
    #: downloads from the network (package repositories, PyPI): trusts ``--ca-bundle`` if given
    network: bool = False


@dataclass(frozen=True, kw_only=True)
class SetEnv:
    """Environment variables for later steps and for the container."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Copy:
    """Copy a build-context file into the image."""

    src: str
    dest: str
    mode: int | None = None


@dataclass(frozen=True, kw_only=True)
class Workdir:
    """Working directory for later steps and for the container."""

    path: str


@dataclass(frozen=True, kw_only=True)
class User:
    """User for later steps and for the container (Docker only; Apptainer runs as the caller)."""

    name: str


Step: TypeAlias = Run | SetEnv | Copy | Workdir | User


@dataclass(frozen=True, kw_only=True)
class Test:
    """A smoke command; a definition file's %test runs them too."""

    name: str
    run: str


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """What the container does when run: the effective entrypoint, command and directory."""

    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    workdir: str | None


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    """Everything a writer needs to produce one image's build files.

    The field names are part of the content digest (``resolve.digest_of`` hashes the plan as a
    dict): renaming a field changes every image's digest and forces every image to be rebuilt.
    """

    name: str
    slug: str
    help: str
    base: Base
    family: Literal["el7", "el9", "debian", "ubuntu"]
    #: environment inherited from the parent image (exported again in %post for Apptainer)
    inherited_env: tuple[tuple[str, str], ...]
    inherited_workdir: str | None
    steps: tuple[Step, ...]
    #: ENTRYPOINT and CMD this image sets itself (Dockerfile)
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    #: what a container runs, parents' settings included (the %runscript)
    runtime: Runtime
    labels: tuple[tuple[str, str], ...]
    tests: tuple[Test, ...]
    context: tuple[ContextFile, ...]
