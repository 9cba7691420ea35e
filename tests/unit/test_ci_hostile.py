"""`ci generate` keeps user strings (spec paths, arguments, matrix values) as data."""

from __future__ import annotations

import dataclasses
import shlex
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from hepml_images import ci
from hepml_images.errors import UsageError
from hepml_images.pipeline import resolve_directory
from hepml_images.spec.load import shipped_dir

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant

#: Spec paths and arguments that try to leave their place in the YAML or the shell line.
HOSTILE = [
    "specs/a\nbuild:evil:\n  script: [id]",
    "specs/a\rbuild:evil: {script: [id]}",
    "specs/a\x85build:evil: {script: [id]}",
    "specs/a\u2028build:evil: {script: [id]}",
    "specs/a\u2029x: 1",
    "specs/a'; id; echo '.yaml",
    'specs/a"; id; ".yaml',
    "specs/$(id).yaml",
    "specs/`id`.yaml",
    "specs/a #b: c",
    "specs/a: b",
    "- [x]",
    "{a: b}",
    "*anchor",
    "!!python/object:os.system",
    "specs/a\\nb",
]


@pytest.fixture(scope="module")
def variants() -> tuple[ResolvedVariant, ...]:
    return resolve_directory(shipped_dir()).variants


def _one(variants: tuple[ResolvedVariant, ...]) -> ResolvedVariant:
    return next(v for v in variants if v.key == "debian-base:default")


def _comments_and_body(text: str) -> tuple[list[str], str]:
    head, _, body = text.partition("\n\n")
    return head.split("\n"), body


@pytest.mark.parametrize("provider", ci.PROVIDERS)
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_spec_paths_stay_data(
    variants: tuple[ResolvedVariant, ...], provider: ci.Provider, hostile: str
) -> None:
    variant = _one(variants)
    plain = yaml.safe_load(ci.generate([variant], provider, spec_refs={variant.spec: "x.yaml"}))
    text = ci.generate(
        [variant], provider, spec_refs={variant.spec: hostile}, arguments=[hostile, "b"]
    )
    comments, _ = _comments_and_body(text)
    assert all(line.startswith("#") for line in comments)
    for line in comments:
        assert not any(not ch.isprintable() for ch in line), repr(line)
    data: dict[str, Any] = yaml.safe_load(text)
    assert list(data) == list(plain), "no job or key added"
    scripts = _run_lines(data, provider)
    assert scripts, "the build lines are found"
    for line in scripts:
        words = shlex.split(line)
        assert hostile in words, f"{hostile!r} is one shell word of {line!r}"
        assert words.count(hostile) == line.count(shlex.quote(hostile))


def _run_lines(data: dict[str, Any], provider: str) -> list[str]:
    if provider == "gitlab":
        return [
            str(job["script"][-1])
            for name, job in data.items()
            if isinstance(job, dict) and "script" in job and name.startswith("build:")
        ]
    return [
        str(step["run"])
        for job in data["jobs"].values()
        for step in job["steps"]
        if str(step.get("run", "")).startswith("hepml-images build")
    ]


@pytest.mark.parametrize(
    "hostile", ["${{ secrets.GITHUB_TOKEN }}.yaml", "specs/${{github.actor}}", "a${{"]
)
def test_github_expressions_in_spec_paths_are_refused(
    variants: tuple[ResolvedVariant, ...], hostile: str
) -> None:
    variant = _one(variants)
    with pytest.raises(UsageError, match="GitHub Actions would evaluate") as caught:
        ci.generate([variant], "github", spec_refs={variant.spec: hostile})
    assert caught.value.exit_code == 2
    # GitLab does not evaluate ${{ }}: there it is just a quoted path
    text = ci.generate([variant], "gitlab", spec_refs={variant.spec: hostile})
    assert shlex.quote(hostile) in text or hostile in str(yaml.safe_load(text))


def test_github_expressions_in_arguments_stay_in_the_comment(
    variants: tuple[ResolvedVariant, ...],
) -> None:
    variant = _one(variants)
    text = ci.generate([variant], "github", arguments=["${{ secrets.X }}\nname: evil"])
    comments, body = _comments_and_body(text)
    assert "secrets.X" not in body
    assert any("secrets.X }}\\nname: evil" in line for line in comments)


@pytest.mark.parametrize(
    "value", ["a b", "a;id", "$(id)", "${{ secrets.X }}", "a\nb", "../x", "a/b", ""]
)
@pytest.mark.parametrize("provider", ci.PROVIDERS)
def test_unsafe_matrix_values_are_refused(
    variants: tuple[ResolvedVariant, ...], provider: ci.Provider, value: str
) -> None:
    variant = next(v for v in variants if v.matrix)
    axis = variant.matrix[0][0]
    hostile = dataclasses.replace(variant, slug=value, matrix=((axis, value), *variant.matrix[1:]))
    with pytest.raises(UsageError, match="cannot go into a CI pipeline"):
        ci.generate([hostile], provider)


def test_comment_text_escapes_every_line_break() -> None:
    for ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00\x1b":
        escaped = ci.comment_text(f"a{ch}b")
        assert escaped.isprintable(), repr(escaped)
        assert len(escaped.splitlines()) == 1
    assert ci.comment_text("plain text: ok") == "plain text: ok"
