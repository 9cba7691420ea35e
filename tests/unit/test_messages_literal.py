"""User text in messages is printed as it is: no rich markup, no emoji codes, no highlighting.

A path such as ``:x:[bold]a`` must be shown as typed. The CLI's consoles decide this; these
tests check that they are created with ``emoji=False, markup=False,
highlight=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hepml_images.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

BASE = "name: demo\nbase:\n  image: debian:12\n  family: debian\n"


def test_an_error_shows_emoji_codes_as_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / ":x:demo.yaml"
    spec.write_text(BASE + "env:\n  FOO: '$(id)'\n", encoding="utf-8")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert ":x:demo.yaml" in err, err


def test_a_progress_line_shows_markup_as_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "demo.yaml"
    spec.write_text(BASE, encoding="utf-8")
    out = tmp_path / "[bold]out:x:"
    assert main(["render", str(spec), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[bold]out:x:" in err, err
