"""The JSON Schema of the spec language (draft 2020-12). Pure data.

The schema describes structure and types, so that editors can complete keys and flag typos as
people type. Rules on values (what a package name, version or path may be) are checked after
matrix substitution by ``hepml_images.spec.values``, because a value may be an expression such as
``${{ matrix.python }}`` that only becomes concrete per variant.
"""

from __future__ import annotations

from typing import Any

SCHEMA_ID = "https://hepml-images.invalid/schema/spec-v1.json"

#: A `${{ matrix.NAME }}` or `${{ spec.NAME }}` expression, as it may appear inside a string.
EXPRESSION = r"\$\{\{\s*[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_-]+\s*\}\}"


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _choice(description: str, values: list[str]) -> dict[str, Any]:
    """An enumerated value that may also be written as an expression."""
    return {
        "description": description,
        "anyOf": [{"enum": values}, {"type": "string", "pattern": EXPRESSION}],
    }


def _flag(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "anyOf": [{"type": "boolean"}, {"type": "string", "pattern": EXPRESSION}],
    }


def _strings(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": {"type": "string"}}


def _object(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": properties,
        **extra,
    }


_IMAGE_BASE = _object(
    "Start from an existing image.",
    {
        "image": _str(
            "Image reference, e.g. `almalinux:9.4` or `gitlab-registry.cern.ch/atlas/athena/analysisbase:25.2.30`."
        ),
        "digest": _str("Pinned content digest `sha256:…`; the image is then pulled by digest."),
        "family": _choice(
            "Distribution family: decides the package manager (el7: yum via vault.centos.org, el9: dnf, debian/ubuntu: apt).",
            ["el7", "el9", "debian", "ubuntu"],
        ),
        "release": _str(
            "Distribution release (`bookworm`, `jammy`, `7`, `9`); used to check which Python the distribution ships."
        ),
    },
    required=["image", "family"],
)

_BOOTSTRAP = _object(
    "Bootstrap the root filesystem from distribution packages: no image registry needed.",
    {
        "distro": _choice("Distribution to bootstrap.", ["debian"]),
        "suite": _str("Debian suite, e.g. `bookworm`."),
        "variant": _choice("mmdebstrap/debootstrap variant.", ["minbase", "buildd", "standard"]),
        "mirror": _str("Package mirror URL (http or https)."),
        "components": _strings("Archive areas, default `[main]`."),
        "packages": _strings("Extra packages to include in the root filesystem."),
    },
    required=["suite"],
)

_BASE = {
    "description": "Where the image starts: an existing image, or a root filesystem bootstrapped from packages. Exactly one of `base` and `extends`.",
    "oneOf": [
        _IMAGE_BASE,
        _object("Bootstrapped base.", {"bootstrap": _BOOTSTRAP}, required=["bootstrap"]),
    ],
}

_ENABLED = _flag(
    "Switch the component off for some variants, usually with a matrix expression (default true)."
)

_COMPONENTS = _object(
    "Building blocks, each installed the way its distribution family needs. The tool orders them so that what changes rarely comes first.",
    {
        "system-packages": _object(
            "Distribution packages.",
            {
                "packages": _strings(
                    "Package names, optionally pinned (`name=1.2` for apt, `name-1.2` for yum/dnf)."
                )
            },
            required=["packages"],
        ),
        "hdf5": _object(
            "The HDF5 library, headers and command-line tools (h5dump, h5ls) from the distribution.",
            {"version": _str("Expected HDF5 version (major.minor), checked by the smoke tests.")},
        ),
        "python": _object(
            "Python 3 and a virtual environment that later steps and the runtime use.",
            {
                "version": _str("Python version, major.minor (e.g. `3.11`)."),
                "source": _choice(
                    "`system`: the distribution's interpreter; `existing`: an interpreter already in the base (e.g. AnalysisBase's release Python).",
                    ["system", "existing"],
                ),
                "interpreter": _str(
                    "Interpreter to build the venv from (default `python3`, or `python3.X` for el9)."
                ),
                "venv": _str("Absolute path of the virtual environment (default `/opt/venv`)."),
                "system-site-packages": _flag(
                    "Let the venv see the interpreter's packages (useful on top of AnalysisBase)."
                ),
            },
            required=["version"],
        ),
        "pip": _object(
            "Python packages installed into the venv.",
            {
                "requirements": _strings(
                    "Requirement specifiers, e.g. `numpy==2.1.3`, `uproot>=5`."
                ),
                "file": _str("A requirements file, relative to the spec file."),
                "require-hashes": _flag(
                    "Install with `--no-deps --require-hashes` (the file must be hash-locked)."
                ),
                "index-url": _str("Alternative package index URL."),
                "build-from-source": _strings(
                    "Projects pip builds from source (`--no-binary`) against the image's own"
                    " libraries, e.g. `h5py` against the system HDF5. A compiler and the Python"
                    " headers are installed for that step and removed again in it."
                ),
            },
        ),
        "tensorflow": _object(
            "TensorFlow, CPU-only or CUDA-enabled.",
            {
                "version": _str("TensorFlow release, e.g. `2.18.1`."),
                "accelerator": _choice("`cpu` or `cuda`.", ["cpu", "cuda"]),
            },
            required=["version", "accelerator"],
        ),
        "cuda": _object(
            "CUDA and cuDNN runtime libraries.",
            {
                "version": _str("CUDA version, major.minor (e.g. `12.5`)."),
                "cudnn": _str("cuDNN version, major.minor (e.g. `9.3`)."),
                "source": _choice(
                    "`pip`: NVIDIA's wheels (brought by `tensorflow[and-cuda]`); `system`: NVIDIA's package repository; `image`: already in the base image (e.g. `nvidia/cuda:*-cudnn-*`).",
                    ["pip", "system", "image"],
                ),
            },
            required=["version"],
        ),
        "analysisbase": _object(
            "The ATLAS AnalysisBase release environment: an entrypoint sources the release setup, then runs the command.",
            {
                "release": _str("AnalysisBase release, e.g. `25.2.30`."),
                "setup": _str("The release setup script (default `/release_setup.sh`)."),
            },
            required=["release"],
        ),
    },
)
for _component in _COMPONENTS["properties"].values():
    _component["properties"]["enabled"] = _ENABLED

_SMOKE = {
    "type": "array",
    "description": "Commands that must exit 0 in the built image (run with `sh -c`).",
    "items": {
        "anyOf": [
            {"type": "string"},
            _object(
                "A named smoke test.",
                {"name": _str("Short name shown in reports."), "run": _str("Shell command.")},
                required=["name", "run"],
            ),
        ]
    },
}

_MATRIX = {
    "type": "object",
    "description": "Variant axes: each key lists its values; every combination is a variant. `exclude` drops combinations, `include` adds keys to matching ones.",
    "properties": {
        "exclude": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "include": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
    "additionalProperties": {"type": "array", "items": {"type": "string"}, "minItems": 1},
}

SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "hepml-images environment spec",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "oneOf": [{"required": ["base"]}, {"required": ["extends"]}],
    "properties": {
        "name": _str(
            "Spec name: lower-case letters, digits and dashes; also the image repository name.",
            pattern="^[a-z0-9][a-z0-9-]*$",
        ),
        "description": _str("One line describing the environment; the definition file's %help."),
        "version": _str("Version of this environment, used in tags (default `0.1.0`)."),
        "extends": _str("Name of the spec whose image this one is built FROM."),
        "base": _BASE,
        "matrix": _MATRIX,
        "components": _COMPONENTS,
        "env": {
            "type": "object",
            "description": "Environment variables of the image (also set for later build steps).",
            "additionalProperties": {"type": "string"},
        },
        "files": {
            "type": "array",
            "description": "Files copied into the image.",
            "items": _object(
                "One file.",
                {
                    "src": _str("Path relative to the spec file."),
                    "dest": _str("Absolute path in the image."),
                    "mode": _str("Octal permission bits, e.g. `0755`."),
                },
                required=["src", "dest"],
            ),
        },
        "workdir": _str("Working directory of later steps and of the container."),
        "user": _str(
            "User the container runs as (Docker; Apptainer runs as the caller). Build steps always run as root."
        ),
        "entrypoint": _strings("Entrypoint, exec form."),
        "cmd": _strings("Default command, exec form."),
        "labels": {
            "type": "object",
            "description": "Free-form image labels.",
            "additionalProperties": {"type": "string"},
        },
        "tags": _strings(
            "Tag templates per variant, e.g. `${{ spec.version }}-tf${{ matrix.tensorflow }}`."
        ),
        "smoke": _SMOKE,
        "gpu": _object(
            "GPU checks for this spec's variants.",
            {
                "check": _choice(
                    "`required`: GPU checks must run and pass; `auto`: run when a GPU is present; `none`: never.",
                    ["required", "auto", "none"],
                )
            },
        ),
        "publish": _object(
            "Where and how the images are published.",
            {
                "repositories": _strings(
                    "Repositories, e.g. `ghcr.io/org/name` or `gitlab-registry.cern.ch/group/name`."
                ),
                "tags": _strings("Tag templates used when publishing (default: `tags`)."),
                "immutable": _strings("Tag templates that must never move once pushed."),
            },
        ),
        "singularity": _object(
            "Apptainer/Singularity outputs.",
            {
                "sif": _flag("Make a SIF file."),
                "sandbox": _flag("Make a sandbox directory."),
            },
        ),
    },
}
