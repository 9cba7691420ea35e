"""The workflow's rules, against a recording fake engine: what is rebuilt, tested, pushed, refused.

- the publish gate: no passing smoke-test result for the exact image ID, no push at all;
- immutable tags, for images and SIF artifacts alike: never moved unless ``--force``;
- rebuilds: a changed parent rebuilds its children, an unchanged ladder builds nothing,
  ``--no-cache`` rebuilds everything;
- ``run_build``: nothing is pushed when a build or a test failed.

Specs are written by the tests into temporary directories (a user's own specs).
"""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import oras, pipeline, publish
from hepml_images.build.graph import Builder, Options, State
from hepml_images.registry import TagAction, tag_action
from hepml_images.sif.make import Made
from hepml_images.smoke import session
from tests.unit.fakes import FakeEngine, digest_of

if TYPE_CHECKING:
    from pathlib import Path

    from hepml_images.resolve import ResolvedVariant

REGISTRY = "registry.example.org/ns"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Results, credentials and Docker configuration of this test only."""
    monkeypatch.setenv("HEPML_IMAGES_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("HEPML_REGISTRY_USER", raising=False)
    monkeypatch.delenv("HEPML_REGISTRY_PASSWORD", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _write_specs(
    directory: Path, *, parent_env: str = "1", child_env: str = "1", parent_version: str = "1.0.0"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "my-base.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: my-base
            version: "{parent_version}"
            base: {{image: "debian:12", family: debian}}
            env: {{PARENT_SETTING: "{parent_env}"}}
            """
        )
    )
    (directory / "my-child.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: my-child
            version: "2.0.0"
            extends: my-base
            env: {{CHILD_SETTING: "{child_env}"}}
            tags: ["${{{{ spec.version }}}}"]
            publish:
              tags: ["${{{{ spec.version }}}}", latest]
              immutable: ["${{{{ spec.version }}}}"]
            """
        )
    )
    return directory / "my-child.yaml"


def _child(spec: Path) -> ResolvedVariant:
    (variant,) = pipeline.resolve_specs([str(spec)]).selected
    return variant


def _passed(image_id: str, *, passed: bool = True) -> None:
    path = session.result_path(image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    checks = [{"name": "python runs", "status": "passed" if passed else "failed"}]
    path.write_text(json.dumps({"image_id": image_id, "passed": passed, "checks": checks}))


class _Events:
    """Events that keep what they were told (the CLI's display shows them)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def building(self, outcomes: Any) -> Any:
        import contextlib

        del outcomes
        return contextlib.nullcontext()

    def outcome(self, outcome: Any) -> None:
        del outcome

    def built(self, outcomes: Any) -> None:
        del outcomes

    def step(self, what: str) -> Any:
        import contextlib

        del what
        return contextlib.nullcontext(lambda *_: None)

    def tested(self, reports: Any) -> None:
        del reports

    def published(self, results: Any, *, dry_run: bool) -> None:
        del results, dry_run

    def sifs_published(self, rows: Any) -> None:
        del rows


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    """A fake engine whose pushes land in its registry, which publish reads back."""
    fake = FakeEngine()

    def current(repository: str, tags: list[str], *_: Any, **__: Any) -> dict[str, str | None]:
        return {tag: fake.registry.get(f"{repository}:{tag}") for tag in tags}

    monkeypatch.setattr(publish, "current_digests", current)
    return fake


def _publish(
    engine: FakeEngine, variant: ResolvedVariant, image_id: str, *, force: bool = False
) -> list[publish.Published]:
    return publish.publish(
        engine,
        [(variant, image_id)],
        registry=REGISTRY,
        dry_run=False,
        force=force,
        note=lambda _m: None,
        sleep=lambda _s: None,
    )


# --- the tag rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "immutable", "force", "action"),
    [
        ("sha256:a", True, False, TagAction.UP_TO_DATE),
        (None, True, False, TagAction.PUSH),
        ("sha256:b", False, False, TagAction.MOVE),
        ("sha256:b", True, False, TagAction.REFUSE),
        ("sha256:b", True, True, TagAction.MOVE),
    ],
)
def test_tag_action(current: str | None, immutable: bool, force: bool, action: TagAction) -> None:
    assert tag_action(current, "sha256:a", immutable=immutable, force=force) is action


# --- the publish gate -------------------------------------------------------------------------


def test_an_untested_image_is_refused_and_nothing_is_pushed(
    engine: FakeEngine, tmp_path: Path
) -> None:
    variant = _child(_write_specs(tmp_path / "specs"))
    image = engine.add(variant.content_ref)
    (result,) = _publish(engine, variant, image.id)
    assert result.error is not None
    assert "no smoke-test result" in result.error
    assert engine.names("push") == []
    assert engine.names("relabel") == []
    assert publish.failure([result]) is not None


def test_an_image_with_failed_checks_is_refused(engine: FakeEngine, tmp_path: Path) -> None:
    variant = _child(_write_specs(tmp_path / "specs"))
    image = engine.add(variant.content_ref)
    _passed(image.id, passed=False)
    (result,) = _publish(engine, variant, image.id)
    assert result.error is not None
    assert "python runs" in result.error
    assert engine.names("push") == []


def test_a_tested_image_is_stamped_and_pushed_under_every_tag(
    engine: FakeEngine, tmp_path: Path
) -> None:
    variant = _child(_write_specs(tmp_path / "specs"))
    image = engine.add(variant.content_ref)
    _passed(image.id)
    (result,) = _publish(engine, variant, image.id)
    repository = f"{REGISTRY}/my-child"
    content = variant.content_ref.rsplit(":", 1)[1]
    assert result.error is None
    assert [tag.tag for tag in result.tags] == [content, "2.0.0", "latest"]
    assert [(r, t) for r, t in engine.names("push")] == [
        (repository, content),
        (repository, "2.0.0"),
        (repository, "latest"),
    ]
    stamped = engine.images[f"{variant.content_ref}-tested"]
    assert stamped.labels["io.hepml.smoke.image"] == image.id
    assert publish.failure([result]) is None
    again = _publish(engine, variant, image.id)[0]
    assert [tag.action for tag in again.tags] == ["already there"] * 3


# --- immutable tags ---------------------------------------------------------------------------


def test_an_immutable_image_tag_is_never_moved_without_force(
    engine: FakeEngine, tmp_path: Path
) -> None:
    variant = _child(_write_specs(tmp_path / "specs"))
    image = engine.add(variant.content_ref)
    _passed(image.id)
    repository = f"{REGISTRY}/my-child"
    engine.registry[f"{repository}:2.0.0"] = digest_of("someone else's image")
    engine.registry[f"{repository}:latest"] = digest_of("an older image")
    (result,) = _publish(engine, variant, image.id)
    actions = {tag.tag: tag.action for tag in result.tags}
    assert actions["2.0.0"] == "refused"
    assert actions["latest"] == "moved"
    assert (repository, "2.0.0") not in engine.names("push")
    assert engine.registry[f"{repository}:2.0.0"] == digest_of("someone else's image")
    problem = publish.failure([result])
    assert problem is not None
    assert problem.hint is not None
    assert "--force" in problem.hint

    (forced,) = _publish(engine, variant, image.id, force=True)
    assert {tag.tag: tag.action for tag in forced.tags}["2.0.0"] == "moved"
    assert (repository, "2.0.0") in engine.names("push")
    assert publish.failure([forced]) is None


def _made(tmp_path: Path, variant: ResolvedVariant, sha: str) -> Made:
    path = tmp_path / f"{variant.spec}.sif"
    path.write_bytes(b"SIF")
    return Made(
        path=path,
        size=3,
        sha256=sha,
        image_id="sha256:" + "1" * 64,
        reference=variant.content_ref,
        epoch=1704067200,
        builder="native",
        seconds={},
    )


def test_an_immutable_sif_tag_is_never_moved_without_force(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variant = _child(_write_specs(tmp_path / "specs"))
    ours = "a" * 64
    content = variant.content_ref.rsplit(":", 1)[1]
    repository = f"{REGISTRY}/my-child"
    held = {
        f"{repository}:{content}-sif": f"sha256:{'b' * 64}",  # the content tag: immutable
        f"{repository}:latest-sif": f"sha256:{'c' * 64}",
        f"{repository}:2.0.0-sif": f"sha256:{ours}",
    }
    pushed: list[str] = []

    def remote(reference: str, **_: Any) -> tuple[str, str] | None:
        layer = held.get(reference)
        return None if layer is None else (digest_of(reference), layer)

    def push(_path: Path, reference: str, **_: Any) -> Any:
        pushed.append(reference)
        held[reference] = f"sha256:{ours}"
        return type("Pushed", (), {"manifest_digest": digest_of(reference)})()

    monkeypatch.setattr(oras, "remote_sif", remote)
    monkeypatch.setattr(oras, "push_sif", push)
    made = [(variant, _made(tmp_path, variant, ours))]
    rows = publish.publish_sifs(made, REGISTRY, force=False, note=lambda _m: None)
    actions = {row.reference.removeprefix("oras://"): row.action for row in rows}
    assert actions == {
        f"{repository}:{content}-sif": "refused",
        f"{repository}:2.0.0-sif": "up to date",
        f"{repository}:latest-sif": "moved",
    }
    assert pushed == [f"{repository}:latest-sif"]
    assert publish.sif_failure(rows) is not None

    rows = publish.publish_sifs(made, REGISTRY, force=True, note=lambda _m: None)
    assert pushed[-1] == f"{repository}:{content}-sif"
    assert publish.sif_failure(rows) is None


# --- what is rebuilt --------------------------------------------------------------------------


def _build(engine: FakeEngine, spec: Path, tmp_path: Path, *, no_cache: bool = False) -> list[str]:
    """Build the spec's closure on the fake engine; the keys of what was built (not skipped)."""
    resolution = pipeline.resolve_specs([str(spec)])
    options = Options(jobs=1, no_cache=no_cache, epoch=0, log_dir=tmp_path / "logs")
    outcomes = Builder(lambda: engine, resolution.selected, options).run()
    assert all(o.state.ok for o in outcomes), [(o.variant.key, o.reason) for o in outcomes]
    return [o.variant.key for o in outcomes if o.state is State.BUILT]


def test_a_changed_parent_rebuilds_its_children(engine: FakeEngine, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    spec = _write_specs(specs)
    assert _build(engine, spec, tmp_path) == ["my-base:default", "my-child:default"]
    assert _build(engine, spec, tmp_path) == []
    _write_specs(specs, parent_env="2")
    assert _build(engine, spec, tmp_path) == ["my-base:default", "my-child:default"]
    _write_specs(specs, parent_env="2", child_env="2")
    assert _build(engine, spec, tmp_path) == ["my-child:default"]
    # a change the child's own plan does not show (the parent's version label) rebuilds it too:
    # it is built FROM the new parent image
    _write_specs(specs, parent_env="2", child_env="2", parent_version="1.0.1")
    assert _build(engine, spec, tmp_path) == ["my-base:default", "my-child:default"]


def test_no_cache_rebuilds_everything(engine: FakeEngine, tmp_path: Path) -> None:
    spec = _write_specs(tmp_path / "specs")
    _build(engine, spec, tmp_path)
    assert _build(engine, spec, tmp_path, no_cache=True) == ["my-base:default", "my-child:default"]


def test_a_content_tag_on_another_image_is_not_up_to_date(
    engine: FakeEngine, tmp_path: Path
) -> None:
    spec = _write_specs(tmp_path / "specs")
    child = _child(spec)
    engine.add(child.content_ref, {"io.hepml.digest": "sha256:" + "0" * 64})
    assert "my-child:default" in _build(engine, spec, tmp_path)


# --- the build command's flow -----------------------------------------------------------------


def _smoke(monkeypatch: pytest.MonkeyPatch, status: str) -> list[str]:
    """Smoke tests that end with ``status`` for every image; the image IDs they were given."""
    from hepml_images.smoke.checks import Check
    from hepml_images.smoke.runner import CheckResult, Status

    tested: list[str] = []

    def check(_engine: Any, variant: ResolvedVariant, image_id: str, **_: Any) -> Any:
        tested.append(image_id)
        result = CheckResult(
            check=Check(name="python runs", component="python", argv=("python",)),
            status=Status(status),
            seconds=0.0,
            message="",
            output="",
        )
        return session.ImageReport(variant=variant, image_id=image_id, results=[result])

    monkeypatch.setattr(session, "check_image", check)
    return tested


def _request(spec: Path, tmp_path: Path) -> pipeline.BuildRequest:
    return pipeline.BuildRequest(
        specs=(str(spec),),
        settings=pipeline.BuildSettings(log_dir=tmp_path / "logs"),
        push=True,
        registry=REGISTRY,
    )


def test_nothing_is_pushed_when_a_smoke_test_fails(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _write_specs(tmp_path / "specs")
    _smoke(monkeypatch, "failed")
    run = pipeline.run_build(
        _request(spec, tmp_path), _Events(), engine_factory=lambda: engine, environ={}
    )
    assert not run.tested.passed
    assert run.published == []
    assert engine.names("push") == []
    assert run.error is not None
    assert "nothing was published" in run.error.message


def test_a_passing_build_is_published_and_not_tested_again(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _write_specs(tmp_path / "specs")
    tested = _smoke(monkeypatch, "passed")
    run = pipeline.run_build(
        _request(spec, tmp_path), _Events(), engine_factory=lambda: engine, environ={}
    )
    assert run.error is None, run.error
    assert len(tested) == 2
    assert {r for r, _ in engine.names("push")} == {f"{REGISTRY}/my-child"}
    assert [r.variant.spec for r in run.published] == ["my-child"]
    again = pipeline.run_build(
        _request(spec, tmp_path), _Events(), engine_factory=lambda: engine, environ={}
    )
    assert again.error is None
    assert len(tested) == 2, "up-to-date images with a passing result are not tested again"
