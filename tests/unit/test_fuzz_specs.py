"""Fuzzing the spec reader: load → resolve → render must answer with a valid render or a user
error with exit code 2 (``SpecError``, ``UsageError``, ``IncompatibleVersions``), never with
another exception.

Two sources of documents: the shipped specs with random mutations (values swapped for hostile
ones, keys dropped or added), so that most documents get past the YAML and schema checks and
reach the resolver and the renderer; and YAML-ish text built from YAML's own punctuation. Each
example is written to a fresh temporary directory with the shipped specs beside it (parents are
found by file name). Bounded: a fixed number of examples and a deadline per example, and no
example database (database=None).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepml_images.errors import HepmlError
from hepml_images.pipeline import render_variants, resolve_specs
from hepml_images.spec.load import shipped_dir

SHIPPED = sorted(p for p in shipped_dir().iterdir() if p.suffix == ".yaml")
#: Examples per test; HEPML_FUZZ_EXAMPLES=5000 for a longer search than CI's (about 5 s each).
EXAMPLES = int(os.environ.get("HEPML_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HOSTILE_STRINGS = [
    "",
    " ",
    "${{ matrix.accelerator }}",
    "${{ matrix.nope }}",
    "${{ spec.version }}",
    "${{ versions.python }}",
    "${{ matrix.",
    "$(reboot)",
    "`id`",
    "a; rm -rf /",
    "../../etc/shadow",
    "/etc/shadow",
    "/dev/zero",
    "lock.txt",
    "example-analysisbase-dask.lock",
    "MyOrg/Image:Tag",
    "ghcr.io/org/img-",
    "debian:12",
    "cpu",
    "cuda",
    "3.11",
    "2.18.1",
    "12.5",
    "el9",
    "debian",
    "bookworm",
    "latest",
    "x" * 300,
    "ü\u202e\x00",
    "%post",
    "line\nbreak",
    "0644",
    "true",
]
SCALARS = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["a", "version", "enabled", "src", "x"]), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "name",
        "base",
        "extends",
        "matrix",
        "components",
        "python",
        "pip",
        "tensorflow",
        "cuda",
        "files",
        "tags",
        "publish",
        "include",
        "exclude",
        "file",
        "require-hashes",
        "accelerator",
        "bootstrap",
        "env",
        "labels",
        "smoke",
    ]
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.extend(_paths(value, (*prefix, index)))
    return out


def _mutate(data: Any, path: tuple[Any, ...], action: str, key: str, value: Any) -> Any:
    if not path:
        if action == "add" and isinstance(data, dict):
            return {**data, key: value}
        if action == "drop":
            return {} if isinstance(data, dict) else None
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        copy = dict(data)
        if not rest and action == "drop":
            copy.pop(head, None)
            return copy
        copy[head] = _mutate(data[head], rest, action, key, value)
        return copy
    copy_list = list(data)
    if not rest and action == "drop":
        del copy_list[head]
        return copy_list
    copy_list[head] = _mutate(data[head], rest, action, key, value)
    return copy_list


def _check(name: str, text: str) -> None:
    """Load, resolve and render ``text`` as spec ``name`` beside the shipped specs."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for source in shipped_dir().iterdir():
            if source.is_file():
                shutil.copyfile(source, directory / source.name)
        path = directory / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        error: HepmlError | None = None
        try:
            resolution = resolve_specs([str(path)])
            render_variants(resolution.selected)
        except HepmlError as exc:
            error = exc
    if error is not None:
        assert error.exit_code == 2, f"{type(error).__name__}, exit code {error.exit_code}"
        assert len(str(error)) < 200_000


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, str]:
    source = draw(st.sampled_from(SHIPPED))
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(data)))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        data = _mutate(data, path, action, draw(KEYS), draw(VALUES))
    return source.stem, yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@FUZZ
@given(mutated_specs())
def test_mutated_shipped_specs(case: tuple[str, str]) -> None:
    _check(*case)


YAML_PIECES = st.sampled_from(
    [
        "name: fuzz\n",
        "base:\n  image: debian:12\n  family: debian\n",
        "extends: debian-base\n",
        "matrix:\n  a: [x, y]\n",
        "tags: ['${{ matrix.a }}']\n",
        "components:\n",
        "  python:\n    version: '3.11'\n",
        "files:\n  - {src: lock.txt, dest: /x}\n",
        "- ",
        ": ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a ",
        "!!str ",
        "<<: ",
        "# c\n",
        "\n",
        "  ",
        "\t",
        "'",
        '"',
        "${{",
        "}}",
        "---\n",
        "? ",
        "|\n",
        "\ufeff",
    ]
)


@FUZZ
@given(st.lists(st.one_of(YAML_PIECES, st.text(max_size=5)), max_size=40))
def test_yaml_ish_text(pieces: list[str]) -> None:
    _check("fuzz", "".join(pieces))
