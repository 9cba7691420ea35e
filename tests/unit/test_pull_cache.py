"""Parents from a registry (``build --pull-from``) and the cache they come from (``--push-cache``).

Against the recording fake engine, whose ``remote`` images a pull can fetch and whose
``registry`` is what the registry API would answer:

- an image the cache has (same content digest, passed smoke tests) is pulled, not built;
- an image the cache does not have is built, and the engine is not asked to pull it;
- a pulled image with another content digest or without a passing result is refused and built;
- ``--push-cache`` pushes the content tag, and only that, of every image built here; pulled
  parents are neither tested again nor pushed; the run's own pulled image is tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import pipeline
from hepml_images.build.graph import Builder, Options, PullFrom, State
from hepml_images.errors import HepmlError
from tests.unit.test_policy import (
    _Events,
    _isolated,
    _smoke,
    _write_specs,
    engine,
)

if TYPE_CHECKING:
    from pathlib import Path

    from hepml_images.build.graph import Outcome
    from hepml_images.resolve import ResolvedVariant
    from tests.unit.fakes import FakeEngine

__all__ = ["_isolated", "engine"]  # fixtures, used here by name

CACHE = "registry.example.org/group/cache"


def _source(engine: FakeEngine) -> PullFrom:
    return PullFrom(namespace=CACHE, lookup=engine.registry.get)


def _variants(spec: Path) -> dict[str, ResolvedVariant]:
    return {v.spec: v for v in pipeline.resolve_specs([str(spec)]).variants}


def _stamped(variant: ResolvedVariant, *, digest: str | None = None, result: str = "passed") -> Any:
    """The labels of a published (stamped) image of ``variant``."""
    return {
        "io.hepml.spec": variant.spec,
        "io.hepml.digest": digest or variant.digest,
        "io.hepml.smoke.result": result,
    }


def _build(engine: FakeEngine, spec: Path, tmp_path: Path) -> dict[str, Outcome]:
    selected = pipeline.resolve_specs([str(spec)]).selected
    options = Options(jobs=1, epoch=0, log_dir=tmp_path / "logs", pull=_source(engine))
    return {o.variant.spec: o for o in Builder(lambda: engine, selected, options).run()}


def _cache_ref(variant: ResolvedVariant) -> str:
    return f"{CACHE}/{variant.spec}:{variant.content_ref.rsplit(':', 1)[1]}"


def test_a_parent_the_cache_has_is_pulled_not_built(engine: FakeEngine, tmp_path: Path) -> None:
    spec = _write_specs(tmp_path / "specs")
    base = _variants(spec)["my-base"]
    manifest = engine.offer(_cache_ref(base), _stamped(base))
    outcomes = _build(engine, spec, tmp_path)
    assert outcomes["my-base"].state is State.PULLED
    assert outcomes["my-base"].pulled_from == _cache_ref(base)
    assert outcomes["my-child"].state is State.BUILT
    assert engine.names("pull") == [(f"{CACHE}/my-base@{manifest}",)], "pinned by digest"
    assert [tag for (tag,) in engine.names("build")] == [outcomes["my-child"].variant.content_ref]
    pulled_id = outcomes["my-base"].image_id
    assert pulled_id is not None
    local = engine.images[base.content_ref]
    assert local.id == pulled_id, "the pulled image is the local content ref the child builds on"
    assert engine.images[base.image].id == pulled_id, "and the moving tag"


def test_what_the_cache_lacks_is_built_without_asking_the_engine(
    engine: FakeEngine, tmp_path: Path
) -> None:
    spec = _write_specs(tmp_path / "specs")
    outcomes = _build(engine, spec, tmp_path)
    assert {k: o.state for k, o in outcomes.items()} == {
        "my-base": State.BUILT,
        "my-child": State.BUILT,
    }
    assert engine.names("pull") == []
    assert all(o.reason is None for o in outcomes.values())


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ({"digest": "sha256:" + "0" * 64}, "io.hepml.digest"),
        ({"result": "failed"}, "io.hepml.smoke.result is failed"),
    ],
)
def test_a_pulled_image_that_does_not_match_is_refused_and_built(
    engine: FakeEngine, tmp_path: Path, labels: dict[str, str], said: str
) -> None:
    spec = _write_specs(tmp_path / "specs")
    base = _variants(spec)["my-base"]
    engine.offer(_cache_ref(base), _stamped(base, **labels))
    outcomes = _build(engine, spec, tmp_path)
    assert outcomes["my-base"].state is State.BUILT
    reason = outcomes["my-base"].reason or ""
    assert reason.startswith(f"refused {_cache_ref(base)}: ")
    assert said in reason
    assert reason.endswith("; built")
    assert engine.images[base.content_ref].labels["io.hepml.digest"] == base.digest


def test_a_registry_that_cannot_answer_means_a_build(engine: FakeEngine, tmp_path: Path) -> None:
    spec = _write_specs(tmp_path / "specs")

    def broken(_reference: str) -> str | None:
        raise HepmlError("registry.example.org refused the credentials")

    selected = pipeline.resolve_specs([str(spec)]).selected
    source = PullFrom(namespace=CACHE, lookup=broken)
    options = Options(jobs=1, epoch=0, log_dir=tmp_path / "logs", pull=source)
    outcomes = Builder(lambda: engine, selected, options).run()
    assert [o.state for o in outcomes] == [State.BUILT, State.BUILT]
    assert "refused the credentials" in (outcomes[0].reason or "")
    assert engine.names("pull") == []


def _cached_run(
    engine: FakeEngine, spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> pipeline.BuildRun:
    monkeypatch.setattr(pipeline, "pull_source", lambda _ns, _note: _source(engine))
    request = pipeline.BuildRequest(
        specs=(str(spec),),
        settings=pipeline.BuildSettings(log_dir=tmp_path / "logs", pull_from=CACHE),
        push_cache=CACHE,
    )
    return pipeline.run_build(request, _Events(), engine_factory=lambda: engine, environ={})


def test_push_cache_pushes_the_content_tags_of_what_was_built(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _write_specs(tmp_path / "specs")
    tested = _smoke(monkeypatch, "passed")
    run = _cached_run(engine, spec, tmp_path, monkeypatch)
    assert run.error is None, run.error
    assert len(tested) == 2
    variants = _variants(spec)
    assert sorted(engine.names("push")) == sorted(
        (f"{CACHE}/{v.spec}", v.content_ref.rsplit(":", 1)[1]) for v in variants.values()
    ), "the content tag only: no version tag, no latest"
    assert run.published == []


def test_pulled_parents_are_trusted_and_the_own_image_is_tested(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _write_specs(tmp_path / "specs")
    variants = _variants(spec)
    for variant in variants.values():
        engine.offer(_cache_ref(variant), _stamped(variant))
    tested = _smoke(monkeypatch, "passed")
    run = _cached_run(engine, spec, tmp_path, monkeypatch)
    assert run.error is None, run.error
    assert [o.state for o in run.built.outcomes] == [State.PULLED, State.PULLED]
    child = run.built.outcomes[1]
    assert tested == [child.image_id], "only the selected image is tested on this host"
    assert engine.names("push") == [], "nothing built here: nothing pushed to the cache"
