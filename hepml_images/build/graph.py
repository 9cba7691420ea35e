"""Build a set of variants in ``extends`` order, cleanly.

Parents once and before their children; independent images in parallel; what is up to date is
skipped; an interruption stops running steps and leaves nothing behind.

With a ``PullFrom`` source (``build --pull-from``), an image that is not up to date locally is
first looked for in a registry under its content tag (``REGISTRY/NS/<spec>:<content tag>``, what
``build --push-cache`` pushes): absent there (a manifest read over the registry API, no engine
call), it is built; present, it is pulled by manifest digest and accepted only when it carries
the variant's content digest and a passing smoke-test result (the published image is the stamped
``-tested`` one); anything else is refused, said in the outcome, and built instead.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from hepml_images import ir
from hepml_images.build import hints
from hepml_images.build.images import (
    Activity,
    BuildError,
    Cancelled,
    build_bootstrapped,
    build_dockerfile,
    export_manifest,
)
from hepml_images.build.normalize import canonical
from hepml_images.engine import DIGEST_LABEL, EngineError
from hepml_images.errors import HepmlError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from hepml_images.engine import Engine
    from hepml_images.engine.buildkit import Backend
    from hepml_images.resolve import ResolvedVariant

_TAIL_LINES = 25
#: The label ``publish.stamp`` adds: what the smoke tests of the published image said.
SMOKE_RESULT_LABEL = "io.hepml.smoke.result"


class State(str, Enum):
    """Where one image stands."""

    WAITING = "waiting"
    BUILDING = "building"
    BUILT = "built"
    UP_TO_DATE = "up to date"
    PULLED = "pulled"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"

    @property
    def ok(self) -> bool:
        """Built now or already there."""
        return self in {State.BUILT, State.UP_TO_DATE, State.PULLED}


@dataclass
class Outcome:
    """One image's build result, updated while it builds."""

    variant: ResolvedVariant
    state: State = State.WAITING
    step: str = ""
    image_id: str | None = None
    reason: str | None = None
    hint: str | None = None
    started: float | None = None
    finished: float | None = None
    log_path: Path | None = None
    log_tail: list[str] = field(default_factory=list)
    #: the registry reference it was pulled from (state ``pulled``)
    pulled_from: str | None = None

    @property
    def seconds(self) -> float | None:
        """Wall time of the build (None until it started)."""
        if self.started is None:
            return None
        return (self.finished or time.monotonic()) - self.started


@dataclass(frozen=True, kw_only=True)
class PullFrom:
    """A registry namespace whose content-tagged images replace local builds (``--pull-from``)."""

    #: ``REGISTRY[/NAMESPACE]``: images are at ``<namespace>/<spec>:<content tag>``
    namespace: str
    #: the manifest digest a reference points at, None when absent (the registry API); raises
    #: ``HepmlError`` when the registry cannot say
    lookup: Callable[[str], str | None]
    #: the engine's credentials for a registry host (None: anonymous)
    auth: Callable[[str], Mapping[str, str] | None] = lambda _registry: None

    def repository(self, variant: ResolvedVariant) -> str:
        """``<namespace>/<spec>``."""
        return f"{self.namespace.rstrip('/')}/{variant.spec}"

    def reference(self, variant: ResolvedVariant) -> str:
        """``<namespace>/<spec>:<content tag>``."""
        return f"{self.repository(variant)}:{variant.content_ref.rsplit(':', 1)[1]}"


def refusal(variant: ResolvedVariant, labels: Mapping[str, str]) -> str | None:
    """Why a pulled image may not stand in for ``variant`` (None when it may)."""
    digest = labels.get(DIGEST_LABEL)
    if digest != variant.digest:
        return f"its {DIGEST_LABEL} is {digest or 'missing'}, not {variant.digest}"
    result = labels.get(SMOKE_RESULT_LABEL)
    if result != "passed":
        return f"its {SMOKE_RESULT_LABEL} is {result or 'missing'}, not passed"
    return None


@dataclass(frozen=True, kw_only=True)
class Options:
    """How to build."""

    jobs: int = 2
    no_cache: bool = False
    epoch: int
    log_dir: Path
    ca_url: str | None = None
    #: build labels of a variant given its parent's image ID (``provenance.build_labels``)
    labels: Callable[[ResolvedVariant, str | None], dict[str, str]] | None = None
    #: SOURCE_DATE_EPOCH of a variant (default: ``epoch``)
    epoch_of: Callable[[ResolvedVariant], int] | None = None
    #: where images are pulled from before they are built (None: always build)
    pull: PullFrom | None = None
    #: the backend that builds Dockerfiles (None: the classic builder)
    backend: Backend | None = None
    #: called once, before the first Dockerfile build starts (not for what is up to date)
    first_build: Callable[[], None] | None = None


def closure(selected: Sequence[ResolvedVariant]) -> list[ResolvedVariant]:
    """The selected variants and every ancestor, each once, parents first."""
    seen: dict[str, ResolvedVariant] = {}

    def add(variant: ResolvedVariant) -> None:
        if variant.key in seen:
            return
        if variant.parent is not None:
            add(variant.parent)
        seen[variant.key] = variant

    for variant in selected:
        add(variant)
    return list(seen.values())


def up_to_date(engine: Engine, variant: ResolvedVariant) -> str | None:
    """The ID of the image already built from this exact content, if any."""
    found = _existing(engine, variant)
    return None if found is None else found[0]


def _existing(engine: Engine, variant: ResolvedVariant) -> tuple[str, tuple[str, ...]] | None:
    """ID and tags of the image built from this exact content, if any.

    The content tag alone is not proof: the image it names must carry the variant's content
    digest (a tag can be moved by hand, or left from an older spec).
    """
    image = engine.image(variant.content_ref)
    if image is None or image.labels.get(DIGEST_LABEL) != variant.digest:
        return None
    return image.id, image.tags


def _tag(engine: Engine, image_id: str, variant: ResolvedVariant, have: Sequence[str] = ()) -> None:
    for ref in sorted({variant.content_ref, variant.image} - set(have)):
        engine.tag(image_id, ref)


def _remove_replaced(engine: Engine, old_id: str | None, new_id: str) -> None:
    """A rebuild leaves the previous image untagged: remove it unless something uses it."""
    if old_id is None or old_id == new_id:
        return
    old = engine.image(old_id)
    if old is not None and not old.tags:
        with contextlib.suppress(EngineError):  # in use (a container, a child image)
            engine.remove_image(old_id)


class Builder:
    """Runs one build session; ``outcomes`` is live state for a progress display."""

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        selected: Sequence[ResolvedVariant],
        options: Options,
        report: Callable[[Outcome], None] = lambda _o: None,
    ) -> None:
        self.engine_factory = engine_factory
        self.options = options
        self.report = report
        self.variants = closure(selected)
        self.outcomes = {v.key: Outcome(variant=v) for v in self.variants}
        self.cancel = threading.Event()
        self.t0 = time.monotonic()
        self._activities: dict[str, Activity] = {}
        self._lock = threading.Lock()
        self._control = engine_factory()

    def _update(self, outcome: Outcome, **changes: object) -> None:
        for key, value in changes.items():
            setattr(outcome, key, value)
        self.report(outcome)

    def _pull(self, engine: Engine, variant: ResolvedVariant, outcome: Outcome) -> str | None:
        """The ID of the image pulled for ``variant``, or None (then built).

        ``outcome.reason`` says why not when there is something to say: a refused image, a
        registry that could not answer, a failed pull.
        """
        source = self.options.pull
        if source is None or self.options.no_cache:
            return None
        reference = source.reference(variant)
        self._update(outcome, step=f"looking for {reference}")
        try:
            manifest = source.lookup(reference)
            auth = source.auth(reference.split("/", 1)[0])
        except HepmlError as exc:
            self._update(outcome, reason=f"not pulled ({reference}: {exc.message}); built")
            return None
        if manifest is None:
            return None
        pinned = f"{source.repository(variant)}@{manifest}"
        self._update(outcome, step=f"pulling {reference}")
        try:
            image_id = engine.pull(pinned, auth)
            found = engine.image(image_id)
        except EngineError as exc:
            self._update(outcome, reason=f"the pull of {reference} failed ({exc.message}); built")
            return None
        refused = refusal(variant, {} if found is None else found.labels)
        if refused is not None:
            with contextlib.suppress(EngineError):
                engine.remove_image(pinned)
            self._update(outcome, reason=f"refused {reference}: {refused}; built")
            return None
        _tag(engine, image_id, variant, () if found is None else found.tags)
        return image_id

    def _build_one(self, variant: ResolvedVariant) -> None:
        outcome = self.outcomes[variant.key]
        engine = self.engine_factory()
        started = time.monotonic()
        pulled = self._pull(engine, variant, outcome)
        if pulled is not None:
            assert self.options.pull is not None  # noqa: S101 - a pull needs a source
            self._update(
                outcome,
                state=State.PULLED,
                image_id=pulled,
                pulled_from=self.options.pull.reference(variant),
                started=started,
                finished=time.monotonic(),
                step="",
            )
            return
        old = engine.image(variant.content_ref)
        old_id = None if old is None else old.id
        activity = Activity(cancel=self.cancel)
        with self._lock:
            self._activities[variant.key] = activity
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.options.log_dir / f"{variant.spec}-{variant.slug}.log"
        self._update(outcome, state=State.BUILDING, started=time.monotonic(), log_path=log_path)

        def progress(step: str) -> None:
            self._update(outcome, step=step)

        try:
            with log_path.open("w", encoding="utf-8", buffering=1) as log:
                log.write(f"# {variant.key} → {variant.content_ref} (digest {variant.digest})\n")
                builder = (
                    build_bootstrapped
                    if isinstance(variant.plan.base, ir.FromBootstrap)
                    else build_dockerfile
                )
                image_id = builder(
                    engine,
                    variant,
                    log=log,
                    progress=progress,
                    activity=activity,
                    **self._extra(variant),
                )
            if not isinstance(variant.plan.base, ir.FromBootstrap):
                image_id = self._canonical(engine, image_id, variant, activity, progress)
            _tag(engine, image_id, variant)
            _remove_replaced(engine, old_id, image_id)
            export_manifest(
                engine, image_id, self.options.log_dir / f"{variant.spec}-{variant.slug}"
            )
        except Cancelled:
            self._finish(outcome, State.CANCELLED, "interrupted")
        except BuildError as exc:
            self._finish(outcome, State.FAILED, exc.message, exc.hint)
        except Exception as exc:  # noqa: BLE001 - engine/API errors: reported per image
            self._finish(outcome, State.FAILED, f"{type(exc).__name__}: {exc}")
        else:
            self._update(
                outcome, state=State.BUILT, image_id=image_id, finished=time.monotonic(), step=""
            )
        finally:
            with self._lock:
                self._activities.pop(variant.key, None)

    def _canonical(
        self,
        engine: Engine,
        built: str,
        variant: ResolvedVariant,
        activity: Activity,
        progress: Callable[[str], None],
    ) -> str:
        """The canonical rewrite of a build; a failed or cancelled one leaves no built image.

        The backend tagged its image with the content tag already: left there, the next run
        would take a build that never became canonical as up to date.
        """

        def step(text: str) -> None:
            activity.check()
            progress(text)

        try:
            return canonical(
                engine, built, variant, epoch=self._extra(variant)["epoch"], progress=step
            )
        except BaseException:
            for reference in (variant.content_ref, built):
                with contextlib.suppress(Exception):
                    engine.remove_image(reference, force=True)
            raise

    def _extra(self, variant: ResolvedVariant) -> dict[str, Any]:
        options = self.options
        parent_id = None
        if variant.parent is not None:
            parent_id = self.outcomes[variant.parent.key].image_id
        labels = options.labels(variant, parent_id) if options.labels else {}
        extra: dict[str, Any] = {
            "no_cache": options.no_cache,
            "ca_url": options.ca_url,
            "labels": labels,
        }
        extra["epoch"] = options.epoch_of(variant) if options.epoch_of else options.epoch
        if not isinstance(variant.plan.base, ir.FromBootstrap):
            extra["backend"] = options.backend
        return extra

    def _finish(self, outcome: Outcome, state: State, reason: str, hint: str | None = None) -> None:
        tail: list[str] = []
        if outcome.log_path is not None and outcome.log_path.exists():
            lines = outcome.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            tail = lines[-_TAIL_LINES:]
            if state is State.FAILED and hint is None:
                hint = hints.for_log(lines, outcome.variant.spec)
        self._update(
            outcome,
            state=state,
            reason=reason,
            hint=hint,
            finished=time.monotonic(),
            log_tail=tail,
            step="",
        )

    def stop(self) -> None:
        """Cancel: nothing new starts; running steps are killed and clean up."""
        self.cancel.set()
        with self._lock:
            activities = list(self._activities.values())
        for activity in activities:
            activity.stop(self._control)

    def run(self) -> list[Outcome]:
        """Build everything; return the outcomes in build order. Ctrl-C → stop, then raise."""
        pending = deque(self.variants)
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            try:
                while pending or running:
                    self._start_ready(pending, running, pool)
                    if not running:
                        break
                    done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        future.result()
            except BaseException:
                self.stop()
                for outcome in self.outcomes.values():
                    if outcome.state is State.WAITING:
                        self._update(outcome, state=State.CANCELLED, reason="interrupted")
                wait(running)
                raise
        return [self.outcomes[v.key] for v in self.variants]

    def _start_ready(
        self,
        pending: deque[ResolvedVariant],
        running: dict[Future[None], str],
        pool: ThreadPoolExecutor,
    ) -> None:
        for variant in list(pending):
            parent = self.outcomes[variant.parent.key] if variant.parent else None
            if parent is not None and parent.state in {State.WAITING, State.BUILDING}:
                continue
            pending.remove(variant)
            outcome = self.outcomes[variant.key]
            if parent is not None and not parent.state.ok:
                self._update(
                    outcome,
                    state=State.BLOCKED,
                    reason=f"parent {parent.variant.key} {parent.state.value}",
                )
                continue
            # the common case, nothing to build, is decided here without a worker thread
            found = None if self.options.no_cache else _existing(self._control, variant)
            if found is not None:
                _tag(self._control, found[0], variant, found[1])
                self._update(outcome, state=State.UP_TO_DATE, image_id=found[0])
                continue
            if self.options.first_build is not None and not isinstance(
                variant.plan.base, ir.FromBootstrap
            ):
                self.options.first_build()
                self.options = replace(self.options, first_build=None)
            self._update(outcome, state=State.BUILDING, step="starting")
            running[pool.submit(self._build_one, variant)] = variant.key
