"""Every class of bad input gives exit code 2 and a message that says where and what.

Spec problems render as ``FILE:LINE: [key.path] message`` with an optional ``    hint:`` line;
command-line problems as ``error: message`` and ``  hint: ...``. No input here may ever print a
traceback.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

import pytest

from hepml_images.cli import main

if TYPE_CHECKING:
    from pathlib import Path

#: A minimal valid spec; the base has no `release`, so no distribution-Python check applies.
BASE = "name: demo\nbase:\n  image: debian:12\n  family: debian\n"
#: The same with a two-value matrix axis.
MATRIX = BASE + "matrix:\n  accel: [cpu, gpu]\n"
#: A `components:` section that starts with Python 3.11.
PY311 = "components:\n  python:\n    version: '3.11'\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI; return the exit code and stderr (never a traceback)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "Traceback" not in captured.out
    assert "internal error" not in captured.err
    return code, captured.err


def invalid(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI on bad input: exit code 2; return stderr."""
    code, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: "), err
    return err


def problem(err: str, file: Path | str, line: int | None, key: str, *parts: str) -> str:
    """Find the problem reported at ``file:line: [key]``; return it with its hint line.

    Every ``parts`` fragment must occur in the message or its hint.
    """
    where = str(file) if line is None else f"{file}:{line}"
    head = f"{where}: [{key}] " if key else f"{where}: "
    lines = err.splitlines()
    for index, text in enumerate(lines):
        if text.startswith(head):
            hint = (
                lines[index + 1]
                if index + 1 < len(lines) and lines[index + 1].startswith("    hint: ")
                else ""
            )
            found = f"{text}\n{hint}"
            if all(part in found for part in parts):
                return found
    pytest.fail(f"no problem {head!r} with {parts!r} in:\n{err}")


# --- YAML-level problems -------------------------------------------------------------------


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", "name: demo\nbase: image: debian:12\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 2, "", "malformed YAML", "hint: check the indentation and quoting")


def test_more_than_one_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", BASE + "---\nname: other\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 5, "", "exactly one YAML document")


def test_tab_in_indentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", "name: demo\nbase:\n\timage: debian:12\n  family: debian\n")
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        3,
        "",
        "tab character in indentation",
        "must use spaces",
        "hint: replace the tabs",
    )


def test_duplicate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", BASE + "env:\n  A: x\n  A: y\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 7, "env.A", "duplicate key 'A'", "first defined on line 6", "hint:")


@pytest.mark.parametrize(
    "case",
    [
        (
            "componnets: {}\n",
            5,
            "componnets",
            ("unknown key 'componnets'", "did you mean 'components'?"),
        ),
        ("labesl: {}\n", 5, "labesl", ("unknown key 'labesl'", "did you mean 'labels'?")),
        ("gpu:\n  chek: auto\n", 6, "gpu.chek", ("unknown key 'chek'", "did you mean 'check'?")),
        (
            "publish:\n  repositores: [ghcr.io/x/y]\n",
            6,
            "publish.repositores",
            ("unknown key 'repositores'", "did you mean 'repositories'?"),
        ),
        ("frobnicate: 1\n", 5, "frobnicate", ("unknown key 'frobnicate'", "allowed: ")),
    ],
    ids=["top-level", "labels", "nested", "publish", "no-close-match"],
)
def test_unknown_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str, tuple[str, ...]],
) -> None:
    extra, line, key, parts = case
    spec = write(tmp_path, "demo.yaml", BASE + extra)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, line, key, *parts)


@pytest.mark.parametrize(
    "case",
    [
        ("env: [A, B]\n", 5, "env", "expected a mapping (key: value), got a list"),
        ("entrypoint: /bin/sh\n", 5, "entrypoint", "expected a list, got '/bin/sh'"),
        (
            "components:\n  python:\n    version: {major: 3}\n",
            7,
            "components.python.version",
            "expected a string, got a mapping",
        ),
        ("labels:\n  a: [x]\n", 6, "labels.a", "expected a string, got a list"),
        (
            "singularity:\n  sif: [yes]\n",
            6,
            "singularity.sif",
            "expected true or false, got a list",
        ),
        ("smoke:\n  - name: only a name\n", 6, "smoke[0]", "missing required key 'run'"),
        ("components:\n  python: {}\n", 6, "components.python", "missing required key 'version'"),
    ],
    ids=[
        "env-list",
        "entrypoint-string",
        "version-mapping",
        "label-list",
        "flag-list",
        "smoke-without-run",
        "missing-required",
    ],
)
def test_wrong_type(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str, str],
) -> None:
    extra, line, key, expected = case
    spec = write(tmp_path, "demo.yaml", BASE + extra)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, line, key, expected)


def test_spec_that_is_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", "- name: demo\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 1, "", "a spec is a mapping of keys", "got a list")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("name: demo\nbase: !!python/object/apply:os.system [id]\n", 2, "base"),
        ("name: demo\ndescription: !!binary aGVsbG8=\n" + BASE.split("\n", 1)[1], 2, "description"),
    ],
    ids=["collection", "scalar"],
)
def test_yaml_tags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, key: str
) -> None:
    spec = write(tmp_path, "demo.yaml", text)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, line, key, "unsupported YAML tag", "hint: remove the `!tag`")


# --- components and versions ---------------------------------------------------------------


def test_unknown_component(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", BASE + "components:\n  pyhton:\n    version: '3.11'\n")
    err = invalid(capsys, "validate", str(spec))
    problem(
        err, spec, 6, "components.pyhton", "unknown component 'pyhton'", "did you mean 'python'?"
    )


def test_unknown_component_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE
        + "components:\n  tensorflow:\n    version: '2.18.1'\n"
        + "    accelerator: cpu\n    acclerator: cuda\n",
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        9,
        "components.tensorflow.acclerator",
        "unknown key 'acclerator'",
        "did you mean 'accelerator'?",
    )


def test_unknown_enumerated_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE + "components:\n  tensorflow:\n    version: '2.18.1'\n    accelerator: cdua\n",
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        8,
        "components.tensorflow.accelerator",
        "expected one of cpu, cuda; got 'cdua'",
        "did you mean 'cuda'?",
    )


@pytest.mark.parametrize(
    "case",
    [
        (
            "python:\n    version: three\n",
            7,
            "components.python.version",
            ("Python version must be written major.minor, got 'three'", 'for example "3.11"'),
        ),
        (
            "python:\n    version: 3\n",
            7,
            "components.python.version",
            ("Python version must be written major.minor, got '3'",),
        ),
        (
            "cuda:\n    version: '12.5.x'\n",
            7,
            "components.cuda.version",
            ("CUDA version must be written major.minor, got '12.5.x'",),
        ),
        (
            "hdf5:\n    version: 1.10-patch\n",
            7,
            "components.hdf5.version",
            ("HDF5 version must be a dotted release number, got '1.10-patch'",),
        ),
        (
            "tensorflow:\n    version: latest\n    accelerator: cpu\n",
            7,
            "components.tensorflow.version",
            ("TensorFlow version must be a dotted release number, got 'latest'",),
        ),
    ],
    ids=["python-word", "python-major-only", "cuda", "hdf5", "tensorflow"],
)
def test_invalid_version(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str, tuple[str, ...]],
) -> None:
    component, line, key, parts = case
    spec = write(tmp_path, "demo.yaml", BASE + "components:\n  " + component)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, line, key, *parts)


def test_unquoted_version_keeps_its_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # YAML would read `3.10` as the float 3.1; the spec language reads the text "3.10". The
    # error (TensorFlow 2.6 is tested with 3.6-3.9 only) shows which Python was understood.
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE
        + "components:\n  python:\n    version: 3.10\n"
        + "  tensorflow:\n    version: 2.6\n    accelerator: cpu\n",
    )
    err = invalid(capsys, "validate", str(spec))
    found = problem(
        err,
        spec,
        9,
        "components.tensorflow.version",
        "TensorFlow 2.6 is not tested with Python 3.10",
        "tested: 3.6",
    )
    assert "Python 3.1 " not in found
    assert "Python 3.1)" not in found


def test_tensorflow_incompatible_with_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE
        + "components:\n  python:\n    version: '3.12'\n"
        + "  tensorflow:\n    version: '2.6.2'\n    accelerator: cpu\n",
    )
    err = invalid(capsys, "validate", str(spec))
    found = problem(
        err,
        spec,
        9,
        "components.tensorflow.version",
        "TensorFlow 2.6",
        "Python 3.12",
        "tested: 3.6\u20133.9",
    )
    # the hint names choices that work, on both sides
    assert re.search(
        r"hint: TensorFlow versions tested with Python 3\.12: [0-9., ]*2\.16", found
    ), found
    assert "or use Python 3.6\u20133.9 with TensorFlow 2.6" in found


def test_tensorflow_incompatible_with_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE
        + PY311
        + "  cuda:\n    version: '11.8'\n    cudnn: '8.6'\n"
        + "  tensorflow:\n    version: '2.18.1'\n    accelerator: cuda\n",
    )
    err = invalid(capsys, "validate", str(spec))
    found = problem(
        err,
        spec,
        12,
        "components.tensorflow.version",
        "TensorFlow 2.18 is not tested with CUDA 11.8",
        "tested: CUDA 12.5",
    )
    assert "TensorFlow 2.18 wants CUDA 12.5 with cuDNN 9.3" in found
    assert re.search(r"TensorFlow versions tested with CUDA 11\.8: 2\.12", found), found


def test_tensorflow_incompatible_with_cudnn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE
        + PY311
        + "  cuda:\n    version: '12.5'\n    cudnn: '8.9'\n"
        + "  tensorflow:\n    version: '2.18.1'\n    accelerator: cuda\n",
    )
    err = invalid(capsys, "validate", str(spec))
    found = problem(
        err,
        spec,
        12,
        "components.tensorflow.version",
        "TensorFlow 2.18 is not tested with cuDNN 8.9",
        "tested: cuDNN 9.3",
    )
    assert "wants cuDNN 9.3 or a later 9.x release, with CUDA 12.5" in found


def test_unknown_tensorflow_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path,
        "demo.yaml",
        BASE + PY311 + "  tensorflow:\n    version: '1.15'\n    accelerator: cpu\n",
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        9,
        "components.tensorflow.version",
        "TensorFlow 1.15 is not in the compatibility table",
        "known TensorFlow versions: 2.6",
    )


# --- extends ---------------------------------------------------------------------------------


def test_extends_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "first.yaml", "name: first\nextends: second\n")
    second = write(tmp_path, "second.yaml", "name: second\nextends: first\n")
    err = invalid(capsys, "validate", str(first))
    for spec in (first, second):
        problem(
            err,
            spec,
            2,
            "extends",
            "extends cycle:",
            "first",
            "second",
            "hint: a spec cannot be built FROM itself",
        )


def test_extends_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", "name: demo\nextends: demo\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 2, "extends", "extends cycle: demo \u2192 demo")


@pytest.mark.parametrize(
    ("parent", "parts"),
    [
        (
            "debian-pyhton",
            ("parent spec 'debian-pyhton' not found", "did you mean 'debian-python'?"),
        ),
        (
            "no-such-parent-anywhere",
            ("parent spec 'no-such-parent-anywhere' not found", "looked beside this file"),
        ),
    ],
    ids=["did-you-mean", "no-close-match"],
)
def test_missing_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], parent: str, parts: tuple[str, ...]
) -> None:
    spec = write(tmp_path, "demo.yaml", f"name: demo\nextends: {parent}\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 2, "extends", *parts)


def test_base_and_extends_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", BASE + "extends: debian-base\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 1, "", "either `base` or `extends`, not both")


# --- variant selection, matrix and expressions ---------------------------------------------


def test_unknown_matrix_key_in_variant_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, "demo.yaml", MATRIX)
    err = invalid(capsys, "render", str(spec), "--variant", "acel=cpu", "--format", "docker")
    assert "unknown matrix key 'acel'" in err
    assert "  hint: did you mean 'accel'?" in err


def test_unknown_matrix_value_in_variant_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, "demo.yaml", MATRIX)
    err = invalid(capsys, "render", str(spec), "--variant", "accel=gpo", "--format", "docker")
    assert "accel=gpo" in err
    assert "  hint: did you mean 'gpu'?" in err


def test_variant_selection_without_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, "demo.yaml", MATRIX)
    err = invalid(capsys, "render", str(spec), "--variant", "accel", "--format", "docker")
    assert "'accel' is not KEY=VALUE" in err
    assert "  hint: " in err


def test_duplicate_spec_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "first.yaml", BASE)
    second = write(tmp_path, "second.yaml", BASE)
    err = invalid(capsys, "validate", str(first), str(second))
    problem(
        err, second, 1, "name", "duplicate spec name 'demo'", f"also defined in {first}", "hint:"
    )


def test_unknown_expression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path, "demo.yaml", MATRIX + "labels:\n  org.example.accel: ${{ matrix.nope }}\n"
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        8,
        "labels.org.example.accel",
        "unknown expression ${{ matrix.nope }}",
        "hint: ",
        "matrix.accel",
    )


def test_unknown_expression_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path, "demo.yaml", MATRIX + "labels:\n  org.example.accel: ${{ matrix.acel }}\n"
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        8,
        "labels.org.example.accel",
        "unknown expression ${{ matrix.acel }}",
        "did you mean 'matrix.accel'?",
    )


def test_unknown_expression_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, "demo.yaml", BASE + "env:\n  A: ${{ matrix.nope }}\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 6, "env.A", "unknown expression ${{ matrix.nope }}")
    assert err.startswith("error: 1 problem in spec files"), err


def test_include_matching_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        BASE
        + "matrix:\n  accel: [cpu, gpu]\n  size: [small, large]\n"
        + "  exclude:\n    - {accel: gpu, size: small}\n"
        + "  include:\n    - {accel: gpu, size: small, extra: x}\n"
    )
    spec = write(tmp_path, "demo.yaml", text)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 11, "matrix.include[0]", "this include matches no variant")


def test_include_with_unknown_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", MATRIX + "  include:\n    - {accel: gpi, extra: x}\n")
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        8,
        "matrix.include[0].accel",
        "'gpi' is not a value of axis 'accel'",
        "did you mean 'gpu'?",
    )


def test_exclude_naming_unknown_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", MATRIX + "  exclude:\n    - {acel: cpu}\n")
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        8,
        "matrix.exclude[0].acel",
        "unknown matrix axis 'acel'",
        "did you mean 'accel'?",
    )


def test_flag_expression_with_a_misspelt_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + "matrix:\n  hdf5: [ture]\ncomponents:\n  hdf5:\n    enabled: ${{ matrix.hdf5 }}\n"
    spec = write(tmp_path, "demo.yaml", text)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 9, "components.hdf5.enabled", "expected true or false, got 'ture'")


# --- values that would reach a shell or the structure of a build file ------------------------


@pytest.mark.parametrize(
    "case",
    [
        (
            "components:\n  system-packages:\n    packages: ['numpy; rm -rf /']\n",
            7,
            "components.system-packages.packages[0]",
            (
                "'numpy; rm -rf /' contains characters that are not allowed",
                "';'",
                "hint: a package name looks like",
            ),
        ),
        ("env:\n  A: $(id)\n", 6, "env.A", ("environment value '$(id)' contains '$('",)),
        ("env:\n  A: x`id`\n", 6, "env.A", ("environment value 'x`id`' contains '`'",)),
        ("env:\n  A B: x\n", 6, "env.A B", ("'A B' is not a valid environment variable name",)),
        (
            'labels:\n  org.example.a: "one\\ntwo"\n',
            6,
            "labels.org.example.a",
            ("must be printable text on one line",),
        ),
        (
            "labels:\n  'Org Example': x\n",
            6,
            "labels.Org Example",
            ("'Org Example' is not a valid label key",),
        ),
        (
            "workdir: /my work\n",
            5,
            "workdir",
            ("'/my work' contains characters that are not allowed", "' '"),
        ),
        ("workdir: /opt/../etc\n", 5, "workdir", ("must not contain '..'",)),
        (
            PY311 + "    venv: /opt/v env\n",
            8,
            "components.python.venv",
            ("contains characters that are not allowed",),
        ),
        (
            PY311 + "  pip:\n    requirements: ['numpy; rm -rf /']\n",
            9,
            "components.pip.requirements[0]",
            ("'numpy; rm -rf /' is not a valid requirement", "hint: for example numpy=="),
        ),
        (
            PY311 + "  pip:\n    requirements: [numpy]\n    index-url: 'https://x.org/$(id)'\n",
            10,
            "components.pip.index-url",
            ("contains characters that are not allowed",),
        ),
        (
            'description: "one\\n%post\\n    id"\n',
            5,
            "description",
            ("must be printable text on one line",),
        ),
        ('cmd: ["/bin/sh\\n%post"]\n', 5, "cmd[0]", ("must be printable text on one line",)),
        ('smoke: ["true\\n%post\\nid"]\n', 5, "smoke[0]", ("must not start with %",)),
    ],
    ids=[
        "package",
        "env-command-substitution",
        "env-backquote",
        "env-name",
        "label-newline",
        "label-key",
        "path-space",
        "path-dotdot",
        "venv-space",
        "requirement",
        "index-url",
        "description-newline",
        "cmd-newline",
        "smoke-section",
    ],
)
def test_shell_metacharacters(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str, tuple[str, ...]],
) -> None:
    extra, line, key, parts = case
    spec = write(tmp_path, "demo.yaml", BASE + extra)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, line, key, *parts)


def test_image_reference_with_semicolon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path, "demo.yaml", "name: demo\nbase:\n  image: 'debian:12;id'\n  family: debian\n"
    )
    err = invalid(capsys, "validate", str(spec))
    problem(
        err,
        spec,
        3,
        "base.image",
        "'debian:12;id' is not a valid image reference",
        "hint: for example",
    )


def test_file_source_outside_the_spec_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path, "demo.yaml", BASE + "files:\n  - src: ../secret\n    dest: /etc/secret\n"
    )
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 6, "files[0].src", "without '..'", "hint: put the file next to the spec")


def test_matrix_value_injected_through_include(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # include values are not matrix values: they are checked where they are used
    text = (
        "name: demo\nbase:\n  bootstrap:\n    suite: bookworm\n    variant: ${{ matrix.v }}\n"
        'matrix:\n  x: [a]\n  include:\n    - v: "minbase\\nRUN id"\n'
    )
    spec = write(tmp_path, "demo.yaml", text)
    err = invalid(capsys, "validate", str(spec))
    problem(
        err, spec, 5, "base.bootstrap.variant", "variant must be one of minbase, buildd, standard"
    )


# --- files that are not specs ----------------------------------------------------------------


def test_yaml_alias_bomb_fails_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # nine levels of ten aliases: 10**9 values if expanded naively
    lines = ["name: demo", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    spec = write(tmp_path, "demo.yaml", "\n".join(lines) + "\n")
    started = time.monotonic()
    err = invalid(capsys, "validate", str(spec))
    elapsed = time.monotonic() - started
    assert re.search(
        rf"^{re.escape(str(spec))}:2: \[l\d(\[\d\])+\] document expands to more than \d+ values",
        err,
        re.MULTILINE,
    ), err
    assert "    hint: write the values out" in err
    assert elapsed >= 0  # it finished: the document was not expanded


def test_non_utf8_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "demo.yaml"
    spec.write_bytes(b"name: demo\ndescription: caf\xe9\n")
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, 2, "", "not UTF-8 text", "0xe9", "hint: save the file as UTF-8")


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# nothing but a comment\n", "\ufeff"],
    ids=["empty", "blank", "comment", "bom"],
)
def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    spec = write(tmp_path, "demo.yaml", text)
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, None, "", "the file is empty", "hint: a spec needs at least `name:`")


def test_directory_as_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = invalid(capsys, "validate", str(tmp_path))
    problem(err, tmp_path, None, "", "is a directory, not a spec file", "hint:")


def test_nonexistent_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "missing.yaml"
    err = invalid(capsys, "validate", str(spec))
    problem(err, spec, None, "", "no such file")


def test_unknown_spec_name(capsys: pytest.CaptureFixture[str]) -> None:
    err = invalid(capsys, "validate", "debian-pyhton")
    problem(
        err,
        "debian-pyhton",
        None,
        "",
        "no spec file or shipped spec named 'debian-pyhton'",
        "did you mean 'debian-python'?",
    )


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file anyway"
)
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "demo.yaml", BASE)
    spec.chmod(0)
    try:
        err = invalid(capsys, "validate", str(spec))
    finally:
        spec.chmod(0o644)
    problem(err, spec, None, "", "cannot read the file", "Permission denied")
