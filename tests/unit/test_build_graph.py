"""The build scheduler around the engine: order, parallelism, blocking, skipping.

The engine-facing build functions are replaced by recording fakes here; the real builds are in
tests/integration.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import ir
from hepml_images.build import graph
from hepml_images.build.graph import Builder, Options, State, closure
from hepml_images.build.images import BuildError, image_config
from hepml_images.pipeline import resolve_directory
from hepml_images.spec.load import shipped_dir
from tests.unit.fakes import FakeEngine

if TYPE_CHECKING:
    from pathlib import Path

    from hepml_images.resolve import ResolvedVariant


@pytest.fixture(scope="module")
def variants() -> dict[str, ResolvedVariant]:
    return {v.key: v for v in resolve_directory(shipped_dir()).variants}


class Recorder:
    """Fake builds: record start/end, sleep a little, fail the keys asked to."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.events: list[tuple[str, str]] = []
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, _engine: object, variant: ResolvedVariant, **_: Any) -> str:
        with self.lock:
            self.events.append(("start", variant.key))
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
            self.events.append(("end", variant.key))
        if variant.key in self.fail:
            raise BuildError(f"{variant.key} broke")
        return "sha256:" + hashlib.sha256(variant.key.encode()).hexdigest()


def run(  # noqa: PLR0913 - keyword-only scenario knobs
    monkeypatch: pytest.MonkeyPatch,
    selected: list[ResolvedVariant],
    *,
    fail: set[str] = frozenset(),  # type: ignore[assignment]
    present: set[str] = frozenset(),  # type: ignore[assignment]
    jobs: int = 4,
    tmp: Path,
) -> tuple[list[graph.Outcome], Recorder]:
    recorder = Recorder(set(fail))
    monkeypatch.setattr(graph, "build_dockerfile", recorder)
    monkeypatch.setattr(graph, "build_bootstrapped", recorder)
    monkeypatch.setattr(
        graph, "_existing", lambda _c, v: ("sha256:present", []) if v.key in present else None
    )
    monkeypatch.setattr(graph, "_tag", lambda *_a: None)
    # the canonical rewrite reads and loads image archives: tests/unit/test_normalize.py
    monkeypatch.setattr(graph, "canonical", lambda _e, image_id, *_a, **_k: image_id)
    monkeypatch.setattr(graph, "export_manifest", lambda *_a: [])
    options = Options(jobs=jobs, epoch=0, log_dir=tmp)
    engine = FakeEngine()
    outcomes = Builder(lambda: engine, selected, options).run()
    return outcomes, recorder


def test_closure_puts_parents_first_once(variants: dict[str, ResolvedVariant]) -> None:
    chosen = [variants["debian-tensorflow:cuda"], variants["debian-tensorflow:cpu"]]
    keys = [v.key for v in closure(chosen)]
    assert keys == [
        "debian-base:default",
        "debian-hdf5:default",
        "debian-python:default",
        "debian-tensorflow:cuda",
        "debian-tensorflow:cpu",
    ]


def test_parents_finish_before_children_start_and_jobs_bound_parallelism(
    monkeypatch: pytest.MonkeyPatch, variants: dict[str, ResolvedVariant], tmp_path: Path
) -> None:
    selected = [v for k, v in variants.items() if k.startswith("atlas-tensorflow:")]
    outcomes, recorder = run(monkeypatch, selected, jobs=2, tmp=tmp_path)
    assert all(o.state is State.BUILT for o in outcomes)
    position = {event: i for i, event in enumerate(recorder.events)}
    for outcome in outcomes:
        parent = outcome.variant.parent
        if parent is not None:
            assert position[("end", parent.key)] < position[("start", outcome.variant.key)]
    assert recorder.peak <= 2
    assert recorder.peak == 2  # independent release lines did build side by side


def test_failed_parent_blocks_children_but_not_others(
    monkeypatch: pytest.MonkeyPatch, variants: dict[str, ResolvedVariant], tmp_path: Path
) -> None:
    selected = [variants["debian-tensorflow:cpu"], variants["centos7-base:default"]]
    outcomes, _ = run(monkeypatch, selected, fail={"debian-hdf5:default"}, tmp=tmp_path)
    states = {o.variant.key: o for o in outcomes}
    assert states["debian-base:default"].state is State.BUILT
    assert states["debian-hdf5:default"].state is State.FAILED
    assert states["debian-hdf5:default"].reason == "debian-hdf5:default broke"
    assert states["debian-python:default"].state is State.BLOCKED
    assert states["debian-python:default"].reason == "parent debian-hdf5:default failed"
    assert states["debian-tensorflow:cpu"].state is State.BLOCKED
    assert states["centos7-base:default"].state is State.BUILT


def test_up_to_date_images_are_not_built(
    monkeypatch: pytest.MonkeyPatch, variants: dict[str, ResolvedVariant], tmp_path: Path
) -> None:
    selected = [variants["debian-python:default"]]
    present = {"debian-base:default", "debian-hdf5:default"}
    outcomes, recorder = run(monkeypatch, selected, present=present, tmp=tmp_path)
    assert [o.state for o in outcomes] == [State.UP_TO_DATE, State.UP_TO_DATE, State.BUILT]
    assert [key for kind, key in recorder.events if kind == "start"] == ["debian-python:default"]


def test_bootstrap_config_is_canonical_and_gives_a_stable_id(
    variants: dict[str, ResolvedVariant],
) -> None:
    plan = variants["debian-base:default"].plan
    assert isinstance(plan.base, ir.FromBootstrap)
    first = image_config(plan, "sha256:" + "0" * 64, 1704067200, "mmdebstrap …")
    second = image_config(plan, "sha256:" + "0" * 64, 1704067200, "mmdebstrap …")
    assert first == second
    document = json.loads(first)
    assert document["created"] == "2024-01-01T00:00:00Z"
    assert document["config"]["Labels"]["io.hepml.digest"] == variants["debian-base:default"].digest
    assert document["config"]["Cmd"] == ["/bin/bash"]
    assert first != image_config(plan, "sha256:" + "1" * 64, 1704067200, "mmdebstrap …")


def test_a_failed_step_gets_the_hint_its_log_calls_for(
    monkeypatch: pytest.MonkeyPatch, variants: dict[str, ResolvedVariant], tmp_path: Path
) -> None:
    """apt's "version not found" for a locked package: the outcome says to relock."""

    def stale_lock(_engine: object, variant: ResolvedVariant, **kwargs: Any) -> str:
        if variant.key != "debian-hdf5:default":
            return "sha256:" + hashlib.sha256(variant.key.encode()).hexdigest()
        print("E: Version '1.10.8+repack1-1' for 'libhdf5-dev' was not found", file=kwargs["log"])
        raise BuildError("step 2/5 failed: exit code 100")

    monkeypatch.setattr(graph, "build_dockerfile", stale_lock)
    monkeypatch.setattr(graph, "build_bootstrapped", stale_lock)
    monkeypatch.setattr(graph, "_existing", lambda _c, _v: None)
    monkeypatch.setattr(graph, "_tag", lambda *_a: None)
    monkeypatch.setattr(graph, "canonical", lambda _e, image_id, *_a, **_k: image_id)
    monkeypatch.setattr(graph, "export_manifest", lambda *_a: [])
    engine = FakeEngine()
    options = Options(jobs=1, epoch=0, log_dir=tmp_path)
    outcomes = Builder(lambda: engine, [variants["debian-hdf5:default"]], options).run()
    failed = {o.variant.key: o for o in outcomes}["debian-hdf5:default"]
    assert failed.state is State.FAILED
    assert failed.reason == "step 2/5 failed: exit code 100"
    assert failed.hint is not None
    assert "libhdf5-dev 1.10.8+repack1-1" in failed.hint
    assert "hepml-images lock debian-hdf5" in failed.hint
