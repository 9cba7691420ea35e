"""Typed, frozen spec content for one variant. Pure data, no I/O.

``SpecFile`` is what the loader read; ``Content`` is one variant of it after matrix substitution
and value checks. Everything past the loader works with these objects and trusts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pathlib import Path

    from hepml_images.spec.yamlload import Document

Family = Literal["el7", "el9", "debian", "ubuntu"]
Accelerator = Literal["cpu", "cuda"]


@dataclass(frozen=True, kw_only=True)
class SpecFile:
    """One spec file as loaded: its data, line map and the files it refers to."""

    name: str
    path: Path
    data: dict[str, Any]
    document: Document
    #: Contents of the files the spec refers to, by their path relative to the spec file.
    attachments: dict[str, bytes] = field(default_factory=dict)
    shipped: bool = False
    #: The spec's lock files (``hepml_images.lockfile``) by file name, as read beside it.
    locks: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ImageBase:
    """Start from an existing image."""

    image: str
    digest: str | None
    family: Family
    release: str | None


@dataclass(frozen=True, kw_only=True)
class Bootstrap:
    """Bootstrap a Debian root filesystem from packages."""

    distro: Literal["debian"]
    suite: str
    variant: str
    mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]

    @property
    def family(self) -> Family:
        """Distribution family of the bootstrapped system."""
        return "debian"


@dataclass(frozen=True, kw_only=True)
class SystemPackages:
    """Distribution packages."""

    packages: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Hdf5:
    """HDF5 library and tools from the distribution."""

    version: str | None


@dataclass(frozen=True, kw_only=True)
class Python:
    """Python 3 plus a virtual environment."""

    version: str
    source: Literal["system", "existing"]
    interpreter: str
    venv: str
    system_site_packages: bool


@dataclass(frozen=True, kw_only=True)
class Pip:
    """Python packages installed into the venv."""

    requirements: tuple[str, ...]
    file: str | None
    file_content: bytes | None
    require_hashes: bool
    index_url: str | None
    build_from_source: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Tensorflow:
    """TensorFlow for the CPU or CUDA."""

    version: str
    accelerator: Accelerator


@dataclass(frozen=True, kw_only=True)
class Cuda:
    """CUDA and cuDNN runtime."""

    version: str
    cudnn: str | None
    source: Literal["pip", "system", "image"]


@dataclass(frozen=True, kw_only=True)
class AnalysisBase:
    """ATLAS AnalysisBase release environment."""

    release: str
    setup: str


@dataclass(frozen=True, kw_only=True)
class Components:
    """The components of one spec (not those of its parents)."""

    system_packages: SystemPackages | None = None
    hdf5: Hdf5 | None = None
    python: Python | None = None
    pip: Pip | None = None
    tensorflow: Tensorflow | None = None
    cuda: Cuda | None = None
    analysisbase: AnalysisBase | None = None


@dataclass(frozen=True, kw_only=True)
class FileCopy:
    """A file from beside the spec copied into the image."""

    src: str
    dest: str
    mode: str | None
    content: bytes


@dataclass(frozen=True, kw_only=True)
class SmokeTest:
    """A shell command that must exit 0 in the built image."""

    name: str
    run: str


@dataclass(frozen=True, kw_only=True)
class Publish:
    """Publishing settings."""

    repositories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    immutable: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Singularity:
    """Apptainer/Singularity output settings."""

    sif: bool = True
    sandbox: bool = False


GpuCheck = Literal["required", "auto", "none"]


@dataclass(frozen=True, kw_only=True)
class Content:
    """One variant of a spec: every value concrete and checked."""

    name: str
    description: str
    version: str
    extends: str | None
    base: ImageBase | Bootstrap | None
    components: Components
    env: tuple[tuple[str, str], ...]
    files: tuple[FileCopy, ...]
    workdir: str | None
    user: str | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    labels: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    smoke: tuple[SmokeTest, ...]
    gpu: GpuCheck
    publish: Publish
    singularity: Singularity
