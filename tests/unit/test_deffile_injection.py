"""Spec values cannot add a section to a definition file, nor an Apptainer build argument.

Apptainer starts a section at any line whose first word, after white space, begins with ``%``
(so indenting a line does not help), and Apptainer >= 1.2 replaces ``{{ NAME }}`` anywhere in
the file. Every value that reaches Singularity.def is either refused at validation (exit 2,
the key named) or rendered so that neither happens; ``definition_problems`` is the last check.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from hepml_images.cli import main
from hepml_images.render.writers import SECTIONS, definition_problems
from hepml_images.spec import values

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

BASE = "name: demo\nbase:\n  image: debian:12\n  family: debian\n"
PY = "components:\n  python:\n    version: '3.11'\n"

#: Values that try to start a section or a build-argument template.
HOSTILE = [
    "a\n%post\nid",
    "a\n  %post\nid",
    "a\n\t%runscript",
    "a\n\u00a0%post",
    "a\n\u3000%post",
    "a\r%post",
    "a\r\n%post",
    "a\x0b%post",
    "a\x0c%post",
    "a\x1c%post",
    "a\x85%post",
    "a\u2028%post",
    "a\u2029%post",
    "%post",
    "  %post",
    "{{ X }}",
    "{{X}}",
    "a{{ HOME }}b",
    "{{\tX\t}}",
    "{{ \u00e9t\u00e9 }}",
]

FIELDS = {
    "env-value": BASE + "env:\n  FOO: {v}\n",
    "label-value": BASE + "labels:\n  org.example.a: {v}\n",
    "description": BASE + "description: {v}\n",
    "cmd": BASE + "cmd: [{v}]\n",
    "entrypoint": BASE + "entrypoint: [{v}]\n",
    "smoke": BASE + "smoke: [{v}]\n",
    "smoke-run": BASE + "smoke:\n  - name: t\n    run: {v}\n",
    "requirement": BASE + PY + "  pip:\n    requirements: [{v}]\n",
    "requirement-url": BASE
    + PY
    + "  pip:\n    requirements: ['pkg @ https://x.example/{v}.whl']\n",
}


def _render(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str]:
    tmp_path.mkdir()
    spec = tmp_path / "demo.yaml"
    spec.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["render", str(spec), "-o", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    if code == 0:
        return code, (out / "Singularity.def").read_text(encoding="utf-8")
    return code, captured.err


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_values_cannot_change_the_definition_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    for index, value in enumerate(HOSTILE):
        shown = json.dumps(value)
        if field == "requirement-url":
            shown = value.replace("'", "''")
        code, text = _render(tmp_path / str(index), capsys, FIELDS[field].format(v=shown))
        assert code in {0, 2}, f"{field}={value!r}: exit {code}\n{text}"
        if code == 2:
            assert "demo.yaml" in text, text
            assert len(text) < 2000, "the message quotes values, not whole texts"
            continue
        assert definition_problems(text) == [], f"{field}={value!r}:\n{text}"


def test_the_message_names_the_key_and_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _render(tmp_path / "a", capsys, BASE + 'smoke: ["true\\n    %post\\n  id"]\n')
    assert code == 2
    assert "[smoke[0]]" in err
    assert "must not start with %" in err
    code, err = _render(tmp_path / "b", capsys, BASE + 'env:\n  FOO: "{{ HOME }}"\n')
    assert code == 2
    assert "[env.FOO]" in err
    assert "build argument" in err


def test_long_values_are_shortened_in_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = "x" * 5000 + "{{ X }}"
    code, err = _render(tmp_path / "a", capsys, BASE + f"labels:\n  org.example.a: '{value}'\n")
    assert code == 2
    assert "[labels.org.example.a]" in err
    assert len(err) < 1000


def test_indented_smoke_lines_still_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _render(
        tmp_path / "a", capsys, BASE + 'smoke: ["for x in 1 2; do\\n  echo 100%; done"]\n'
    )
    assert code == 0, text
    assert definition_problems(text) == []


# --- the last check itself ------------------------------------------------------------------

GOOD = "Bootstrap: docker\nFrom: x\n\n%post\n    set -e\n\n%test\n    true\n\n%labels\n    a b\n"


def test_the_template_shape_passes() -> None:
    assert definition_problems(GOOD) == []
    assert list(SECTIONS) == sorted(SECTIONS, key=SECTIONS.index)


@pytest.mark.parametrize(
    "bad",
    [
        GOOD + "    x\n  %post\n",
        GOOD.replace("    true\n", "    true\n\u00a0%runscript\n"),
        GOOD.replace("    true\n", "    true\x85%setup\n"),
        GOOD + "%post\n",
        GOOD.replace("%post", "%test", 1),
        GOOD + "%setup\n",
        GOOD.replace("a b", "a {{ X }}"),
        GOOD.replace("%labels", "%labels extra"),
    ],
)
def test_the_last_check_finds_injected_shape(bad: str) -> None:
    assert definition_problems(bad) != []


@pytest.mark.parametrize(
    "check",
    [
        values.requirement,
        values.env_value,
        values.smoke_command,
        lambda v: values.one_line(v, "description"),
        values.abs_path,
        values.image_ref,
    ],
)
def test_messages_quote_at_most_a_snippet_of_a_value(check: Callable[[str], str]) -> None:
    value = "x" * 100_000 + "\n%post {{ X }} $(id)"
    with pytest.raises(values.ValueProblem) as caught:
        check(value)
    assert len(caught.value.message) < 700
    assert f"({len(value)} characters)" in caught.value.message
