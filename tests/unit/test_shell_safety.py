"""Hostile strings in every value that reaches a build file are rejected or safely quoted.

For each place a spec value can reach the Dockerfile or Singularity.def, every string of a list
of nasty ones is put there and the spec rendered. Either the CLI exits 2 with a spec error, or the
rendered files

- have the same structure as with a harmless value (the same Dockerfile instructions, the same
  Singularity header lines and sections: a value cannot add a ``RUN`` or a ``%post``), and
- hold the value, where it contains shell characters, only inside one quoted shell word (RUN
  lines, ``%post``/``%test``/``%runscript``), one ``KEY="value"`` word (ENV, LABEL, export) with
  no command substitution, or one JSON string (exec form).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from packaging.requirements import Requirement

from hepml_images.cli import main

if TYPE_CHECKING:
    from pathlib import Path

NASTY = [
    "numpy; rm -rf /",
    "$(id)",
    "`id`",
    "a b",
    "a\tb",
    "a\nRUN id",
    "a\n%post\n    id",
    "a\n%post\nid",
    "a\r\nb",
    "x' ; id ; '",
    '"; id; "',
    "a'b",
    'a"b',
    "a&&b",
    "a|b",
    "a;b",
    "a>b",
    "$HOME",
    "${HOME}",
    "${IFS}id",
    "a\\",
    "\\n",
    "{a,b}",
    "*",
    "~root",
    "!",
    "#comment",
    "%post",
    "\x00",
    "\u2028x",
    "caf\u00e9",
    "",
    " ",
    "x" * 300,
    "../../etc/passwd",
    "/opt/../etc",
    "/opt/x y",
    "/opt/$(id)",
    "/opt/x\n%post",
    "-e .",
    "--index-url=http://evil.example",
    "numpy==1.0; os_name == 'posix'",
    "numpy @ https://x.example/n.whl",
    "numpy[a,b]>=1",
    "numpy\n--index-url http://evil.example",
    "http://x.example/$(id)",
    "https://x.example/a;id",
    "https://x.example/a b",
    "https://x.example/`id`",
    "debian:12;id",
    "debian:12 AS x",
    "debian:12\nRUN id",
    "3.11; id",
    "2.18.1 && id",
    "0777; id",
    "A=B",
    "org.example.a b",
]

#: Characters that mean something to a shell (or start a new line).
SPECIAL = set(" \t\n\r;&|<>()$`'\"\\*?[]{}~!#%")

BASE = "name: demo\nbase:\n  image: debian:12\n  family: debian\n"
PY = "components:\n  python:\n    version: '3.11'\n"
BOOT = "name: demo\nbase:\n  bootstrap:\n    suite: bookworm\n"


@dataclass(frozen=True)
class Field:
    """A place in a spec; ``{v}`` is replaced with the value as a YAML string."""

    template: str
    harmless: str


FIELDS = {
    "system-package": Field(
        BASE + "components:\n  system-packages:\n    packages: [{v}]\n", "curl"
    ),
    "bootstrap-package": Field(BOOT + "    packages: [{v}]\n", "curl"),
    "bootstrap-suite": Field("name: demo\nbase:\n  bootstrap:\n    suite: {v}\n", "bookworm"),
    "bootstrap-mirror": Field(BOOT + "    mirror: {v}\n", "http://deb.example/debian"),
    "bootstrap-component": Field(BOOT + "    components: [{v}]\n", "main"),
    "bootstrap-variant-by-include": Field(
        BOOT + "    variant: ${{{{ matrix.v }}}}\nmatrix:\n  x: [a]\n  include:\n    - v: {v}\n",
        "buildd",
    ),
    "image": Field("name: demo\nbase:\n  image: {v}\n  family: debian\n", "debian:12"),
    "image-by-include": Field(
        "name: demo\nbase:\n  image: ${{{{ matrix.i }}}}\n  family: debian\n"
        "matrix:\n  x: [a]\n  include:\n    - i: {v}\n",
        "debian:12",
    ),
    "digest": Field(BASE + "  digest: {v}\n", "sha256:" + "0" * 64),
    "python-version": Field(BASE + "components:\n  python:\n    version: {v}\n", "3.11"),
    "python-interpreter": Field(BASE + PY + "    interpreter: {v}\n", "python3.11"),
    "venv": Field(BASE + PY + "    venv: {v}\n", "/opt/env"),
    "tensorflow-version": Field(
        BASE + PY + "  tensorflow:\n    version: {v}\n    accelerator: cpu\n", "2.18.1"
    ),
    "hdf5-version": Field(BASE + "components:\n  hdf5:\n    version: {v}\n", "1.10"),
    "requirement": Field(BASE + PY + "  pip:\n    requirements: [{v}]\n", "numpy==2.1.3"),
    "index-url": Field(
        BASE + PY + "  pip:\n    requirements: [numpy]\n    index-url: {v}\n",
        "https://pypi.example/simple",
    ),
    "analysisbase-setup": Field(
        BASE + "components:\n  analysisbase:\n    release: '25.2.30'\n    setup: {v}\n",
        "/release_setup.sh",
    ),
    "env-name": Field(BASE + "env:\n  {v}: x\n", "FOO"),
    "env-value": Field(BASE + "env:\n  FOO: {v}\n", "bar"),
    "label-key": Field(BASE + "labels:\n  {v}: x\n", "org.example.a"),
    "label-value": Field(BASE + "labels:\n  org.example.a: {v}\n", "hello world"),
    "workdir": Field(BASE + "workdir: {v}\n", "/work"),
    "user": Field(BASE + "user: {v}\n", "atlas"),
    "file-dest": Field(BASE + "files:\n  - src: data.txt\n    dest: {v}\n", "/etc/data.txt"),
    "file-mode": Field(
        BASE + "files:\n  - src: data.txt\n    dest: /etc/data.txt\n    mode: {v}\n", "0644"
    ),
    "cmd": Field(BASE + "cmd: [{v}]\n", "/bin/bash"),
    "entrypoint": Field(BASE + "entrypoint: [{v}]\n", "/bin/bash"),
    "smoke": Field(BASE + "smoke: [{v}]\n", "true"),
    "description": Field(BASE + "description: {v}\n", "a harmless description"),
    "tag": Field(BASE + "tags: [{v}]\n", "v1"),
    "spec-version": Field(BASE + "version: {v}\n", "1.0.0"),
}


def yaml_string(value: str) -> str:
    """``value`` as a YAML double-quoted scalar (JSON strings are YAML)."""
    return json.dumps(value)


def logical_lines(dockerfile: str) -> list[str]:
    """Dockerfile lines with backslash continuations joined."""
    return dockerfile.replace("\\\n", " ").splitlines()


def structure(dockerfile: str, singularity: str) -> tuple[list[str], list[str]]:
    """Dockerfile instructions in order; Singularity header lines' keys and section names."""
    instructions = [
        line.split(maxsplit=1)[0]
        for line in logical_lines(dockerfile)
        if line.strip() and not line.startswith("#")
    ]
    layout = []
    in_header = True
    for line in singularity.splitlines():
        if line.startswith("%"):
            in_header = False
            if line.split()[0] != "%help":  # only there when the description is not empty
                layout.append(line.split()[0])
        elif in_header and line and not line.startswith("#"):
            layout.append(line.split(":", 1)[0])
    return instructions, layout


def shell_words(line: str) -> list[str] | None:
    """Shell words of a line, operators split off; None if it does not parse."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def quoted_in_shell_line(value: str, line: str) -> bool:
    """``value`` is inside one word of ``line`` that is written shell-quoted."""
    words = shell_words(line)
    if words is None:
        return False
    return any(value in word and shlex.quote(word) in line for word in words)


def in_assignment(value: str, line: str, *, expands: bool) -> bool:
    """``value`` is inside one ``KEY="..."`` word; where ``$`` expands, nothing runs commands."""
    if expands and ("`" in value or "$(" in value):
        return False
    try:
        words = shlex.split(line)
    except ValueError:
        return False
    return any("=" in word and value in word.split("=", 1)[1] for word in words)


def unsafe_places(value: str, dockerfile: str, singularity: str) -> list[str]:
    """Lines of the build files where ``value`` (with shell characters) is not safely quoted."""
    if not set(value) & SPECIAL or not value.strip():
        return []
    bad: list[str] = []
    for line in logical_lines(dockerfile):
        if value not in line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword in {"RUN", "CMD", "ENTRYPOINT"} and rest.startswith("["):
            ok = value in json.loads(rest) if rest.endswith("]") else False
        elif keyword == "RUN":
            ok = quoted_in_shell_line(value, rest)
        elif keyword in {"ENV", "LABEL"}:
            ok = in_assignment(value, rest, expands=keyword == "ENV")
        else:
            ok = False  # FROM, COPY, WORKDIR, USER, ADD are not quoted
        if not ok:
            bad.append(f"Dockerfile: {line}")
    section = "header"
    for line in singularity.splitlines():
        if line.startswith("%"):
            section = line.split()[0]
            continue
        if value not in line or line.lstrip().startswith("#"):
            continue
        stripped = line.strip()
        if section in {"%post", "%test", "%runscript"} and not stripped.startswith("export "):
            ok = quoted_in_shell_line(value, stripped)
        elif section in {"%post", "%environment"}:
            ok = in_assignment(value, stripped.removeprefix("export "), expands=True)
        elif section == "%labels":
            ok = stripped.split(" ", 1)[1] == value
        elif section == "%help":
            ok = True  # free text; the structure check keeps it in its section
        else:
            ok = False  # header lines and %files are not quoted
        if not ok:
            bad.append(f"Singularity.def ({section}): {line}")
    return bad


def render(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str, Path]:
    tmp_path.mkdir()
    spec = tmp_path / "demo.yaml"
    spec.write_text(text, encoding="utf-8")
    (tmp_path / "data.txt").write_text("data\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["render", str(spec), "-o", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err, out


def read(out: Path) -> tuple[str, str]:
    return (out / "Dockerfile").read_text(encoding="utf-8"), (out / "Singularity.def").read_text(
        encoding="utf-8"
    )


def check_context(field: str, value: str, out: Path) -> list[str]:
    """Values that reach files of the build context: the requirements file, bootstrap.sh."""
    bad: list[str] = []
    if field == "requirement":
        for path in sorted((out / "requirements").glob("*.txt")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.startswith("-"):
                    bad.append(f"{path.name}: pip option {line!r}")
                else:
                    Requirement(line)  # raises on anything that is not one requirement
    script = out / "bootstrap.sh"
    if script.exists() and value.strip() and set(value) & SPECIAL:
        bad.extend(
            f"bootstrap.sh: {line}"
            for line in script.read_text(encoding="utf-8").splitlines()
            if value in line and line.startswith("exec ") and not quoted_in_shell_line(value, line)
        )
    return bad


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_value_is_rejected_or_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    spec = FIELDS[field]
    code, err, out = render(
        tmp_path / "harmless", capsys, spec.template.format(v=yaml_string(spec.harmless))
    )
    assert code == 0, f"the harmless spec for {field} must render:\n{err}"
    expected = structure(*read(out))
    accepted = 0
    for index, value in enumerate(NASTY):
        code, err, out = render(
            tmp_path / str(index), capsys, spec.template.format(v=yaml_string(value))
        )
        assert code in {0, 2}, f"{field}={value!r}: exit {code}\n{err}"
        if code == 2:
            assert err.startswith("error: "), err
            assert "demo.yaml" in err, err
            continue
        accepted += 1
        dockerfile, singularity = read(out)
        assert structure(dockerfile, singularity) == expected, (
            f"{field}={value!r} changed the structure of the build files:\n"
            f"{dockerfile}\n{singularity}"
        )
        bad = unsafe_places(value, dockerfile, singularity) + check_context(field, value, out)
        assert not bad, f"{field}={value!r} is not safely quoted:\n" + "\n".join(bad)
    assert accepted < len(NASTY), f"{field}: every nasty value was accepted"


# --- the checks themselves must be able to fail ----------------------------------------------


def test_checks_catch_unsafe_renderings() -> None:
    value = "a; id"
    assert unsafe_places(value, f"FROM x\nRUN echo {value}\n", "") != []
    assert unsafe_places(value, f"FROM x\nRUN echo {shlex.quote(value)}\n", "") == []
    assert unsafe_places("$(id)", 'FROM x\nENV A="$(id)"\n', "") != []
    assert unsafe_places("$HOME", 'FROM x\nENV A="$HOME"\n', "") == []
    assert unsafe_places(value, "", f"Bootstrap: docker\n%post\n    echo {value}\n") != []
    assert unsafe_places(value, "", f"Bootstrap: docker\nFrom: {value}\n") != []
    assert unsafe_places('a"b', "", '%environment\n    export A="a"b"\n') != []
    post = "Bootstrap: docker\n%post\n    true\n"
    harmless = structure("FROM x\nRUN true\n", post)
    assert structure("FROM x\nRUN true\nRUN id\n", post) != harmless
    assert structure("FROM x\nRUN true\n", post + "%test\n") != harmless
    assert structure("FROM x\n", "Bootstrap: docker\nFrom: x\nRUN: id\n") != structure(
        "FROM x\n", "Bootstrap: docker\nFrom: x\n"
    )
