"""Specs → frozen, concrete variants in build order. Pure and deterministic.

Input: a ``SpecSet``. Output: ``ResolvedVariant`` objects, parents before children, each with its
checked content, the versions that matter, its tags, its image plan and a content digest.

- ``extends`` forms a graph; cycles and missing parents are errors.
- A child inherits its parent's matrix: its variants are the parent's variants (optionally
  narrowed by naming an inherited axis with fewer values) times its own axes. Each child variant
  is built FROM the parent variant with the same inherited values.
- ``${{ matrix.NAME }}`` and ``${{ spec.NAME }}`` are substituted in every string value; tag
  templates may also use ``${{ versions.NAME }}``.
- Version combinations are checked against ``compat``; an incompatible one is a spec error.
- The digest is a SHA-256 over a canonical JSON form of the image plan (sorted keys, file
  contents hashed) and the parent's digest: stable across runs, machines and key order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepml_images import compat, ir, lockfile, provenance
from hepml_images.components import Handover, Planned, TensorflowInstall, os_packages, plan
from hepml_images.components import manifest as components_manifest
from hepml_images.errors import IncompatibleVersions, Problem, SpecError, UsageError
from hepml_images.spec import content as content_builder
from hepml_images.spec import values
from hepml_images.spec.load import did_you_mean
from hepml_images.spec.schema import EXPRESSION

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from hepml_images.spec.load import SpecSet
    from hepml_images.spec.model import Content, SpecFile

from hepml_images.spec.model import Bootstrap

#: Bump when the meaning of a plan changes without its data changing (forces rebuilds).
DIGEST_FORMAT = 1
#: Local repository prefix of the images this tool builds.
LOCAL_PREFIX = values.LOCAL_PREFIX
#: Most variants one spec may expand to (its parent's variants times its own axes), checked
#: before the matrix is expanded: each variant is a build, and 6 axes of 20 values are 64 million.
MAX_VARIANTS = 256
#: Most `include` or `exclude` entries of one matrix (each is compared with every variant).
MAX_MATRIX_ENTRIES = 256
#: Specs of an extends cycle named in its message.
_CYCLE_SHOWN = 8
#: Longest `extends` chain (a spec, its parent, its parent's parent …).
MAX_EXTENDS_DEPTH = 32

_EXPR = re.compile(EXPRESSION)
_EXPR_PARTS = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_-]+)\s*\}\}")
_NOT_SUBSTITUTED = ("name", "extends", "matrix", "tags", "publish")
#: Resolved-spec fields that do not change the image, left out of /.hepml/spec.json.
_NOT_IN_IMAGE = frozenset({"smoke", "gpu", "publish", "tags", "singularity"})


_NO_INPUTS = lockfile.Inputs()


@dataclass(frozen=True, kw_only=True)
class ResolvedVariant:
    """One concrete image to build."""

    spec: str
    source: str
    matrix: tuple[tuple[str, str], ...]
    #: matrix values plus the keys that `include` added: what `${{ matrix.* }}` sees
    context: tuple[tuple[str, str], ...]
    slug: str
    content: Content
    parent: ResolvedVariant | None
    versions: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    publish_tags: tuple[str, ...]
    immutable_tags: tuple[str, ...]
    plan: ir.ImagePlan
    digest: str
    #: what this image hands over to the variants built FROM it (they start from it)
    handover: Handover
    #: what the variant's lock is resolved from, and the lock the plan installs (if any)
    lock_inputs: lockfile.Inputs = _NO_INPUTS
    lock: lockfile.Lock | None = None
    #: why the variant installs unpinned packages (a user's spec without a lock), or None
    lock_note: str | None = None

    @property
    def lock_path(self) -> str:
        """Where this variant's lock file lives (whether it is there or not)."""
        return str(lockfile.lock_path(Path(self.source), self.slug))

    @property
    def key(self) -> str:
        """``spec:slug``, unique within a resolution."""
        return f"{self.spec}:{self.slug}"

    @property
    def image(self) -> str:
        """Local reference by variant, e.g. ``hepml/debian-tensorflow:cpu``."""
        return f"{LOCAL_PREFIX}/{self.spec}:{self.slug}"

    @property
    def content_ref(self) -> str:
        """Local reference by content digest; what children are built FROM."""
        return content_ref(self.spec, self.digest)

    @property
    def version_map(self) -> dict[str, str]:
        """Key versions as a dict."""
        return dict(self.versions)


def lineage(variant: ResolvedVariant) -> list[ResolvedVariant]:
    """The variant and its ancestors, base first."""
    chain: list[ResolvedVariant] = []
    current: ResolvedVariant | None = variant
    while current is not None:
        chain.append(current)
        current = current.parent
    return chain[::-1]


def content_ref(spec: str, digest: str) -> str:
    """Local image reference of a spec's variant with a given digest."""
    return f"{LOCAL_PREFIX}/{spec}:{digest.removeprefix('sha256:')[:16]}"


class _Problems:
    """Collects problems with file and line, once each."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, int | None, str, str], Problem] = {}

    def add(self, spec: SpecFile, path: str, message: str, hint: str | None = None) -> None:
        problem = Problem(str(spec.path), spec.document.line(path), path, message, hint)
        self.items.setdefault((problem.file, problem.line, problem.path, problem.message), problem)

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(list(self.items.values()))


def _order(specs: Mapping[str, SpecFile], problems: _Problems) -> list[str]:
    """Specs in dependency order; extends cycles and over-long chains are reported.

    Iterative, not recursive: a chain of thousands of specs must end in a problem, not in a
    RecursionError.
    """
    done: set[str] = set()
    in_cycle: set[str] = set()
    depth: dict[str, int] = {}
    order: list[str] = []

    def parent_of(name: str) -> str | None:
        parent = specs[name].data.get("extends")
        return parent if isinstance(parent, str) and parent in specs else None

    for start in sorted(specs):
        trail: list[str] = []
        on_trail: set[str] = set()
        name: str | None = start
        while name is not None and name not in done:
            if name in on_trail:
                cycle = [*trail[trail.index(name) :], name]
                shown = (
                    cycle
                    if len(cycle) <= _CYCLE_SHOWN
                    else [*cycle[: _CYCLE_SHOWN - 1], f"… {len(cycle) - _CYCLE_SHOWN} more …", name]
                )
                for member in cycle[:-1]:
                    problems.add(
                        specs[member],
                        "extends",
                        f"extends cycle: {' → '.join(shown)}",
                        "a spec cannot be built FROM itself, directly or through others",
                    )
                in_cycle.update(cycle)
                break
            trail.append(name)
            on_trail.add(name)
            name = parent_of(name)
        for member in reversed(trail):
            parent = parent_of(member)
            depth[member] = depth.get(parent, 0) + 1 if parent is not None else 1
            if depth[member] == MAX_EXTENDS_DEPTH + 1 and member not in in_cycle:
                problems.add(
                    specs[member],
                    "extends",
                    f"the extends chain is more than {MAX_EXTENDS_DEPTH} specs long",
                    f"an image may stack at most {MAX_EXTENDS_DEPTH} specs",
                )
            done.add(member)
            order.append(member)
    return order


def _substitute(
    value: Any, context: Mapping[str, str], report: content_builder.Report, path: str
) -> Any:
    if isinstance(value, dict):
        return {
            k: _substitute(v, context, report, f"{path}.{k}" if path else k)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, context, report, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${{" not in value:
        return value

    def replace_one(match: re.Match[str]) -> str:
        ref = f"{match.group(1)}.{match.group(2)}"
        if ref not in context:
            known = sorted(context)
            report(
                path,
                f"unknown expression ${{{{ {ref} }}}}",
                did_you_mean(ref, known) or f"known here: {', '.join(known)}",
            )
            return match.group(0)
        return context[ref]

    result = _EXPR_PARTS.sub(replace_one, value)
    if "${{" in _EXPR_PARTS.sub("", value):
        report(
            path,
            f"malformed expression in {values.shown(value)}",
            "write ${{ matrix.NAME }} or ${{ spec.NAME }}",
        )
    return result


def _too_large(spec: SpecFile, matrix: Mapping[str, Any], count: int, problems: _Problems) -> bool:
    """Report a matrix over the limits (checked before it is expanded)."""
    if count > MAX_VARIANTS:
        problems.add(
            spec,
            "matrix",
            f"the matrix expands to {count} variants (before exclude); the limit is"
            f" {MAX_VARIANTS} per spec",
            "split the spec, or narrow the axes",
        )
        return True
    for kind in ("include", "exclude"):
        if len(matrix.get(kind, [])) > MAX_MATRIX_ENTRIES:
            problems.add(
                spec,
                f"matrix.{kind}",
                f"{len(matrix[kind])} {kind} entries; the limit is {MAX_MATRIX_ENTRIES}",
            )
            return True
    return False


def _combinations(
    spec: SpecFile, parents: Sequence[ResolvedVariant | None], problems: _Problems
) -> list[tuple[ResolvedVariant | None, dict[str, str], tuple[tuple[str, str], ...]]]:
    """(parent variant, full matrix context, axis values) for each variant of ``spec``."""
    matrix = spec.data.get("matrix") or {}
    own = {k: tuple(v) for k, v in matrix.items() if k not in {"include", "exclude"}}
    inherited_axes: dict[str, list[str]] = {}
    for parent in parents:
        if parent is not None:
            for axis, value in parent.matrix:
                inherited_axes.setdefault(axis, [])
                if value not in inherited_axes[axis]:
                    inherited_axes[axis].append(value)
    narrowed: dict[str, tuple[str, ...]] = {}
    new_axes: dict[str, tuple[str, ...]] = {}
    for axis, listed in own.items():
        if len(set(listed)) != len(listed):
            problems.add(spec, f"matrix.{axis}", f"matrix axis {axis!r} lists a value twice")
        if axis in inherited_axes:
            unknown = [v for v in listed if v not in inherited_axes[axis]]
            if unknown:
                problems.add(
                    spec,
                    f"matrix.{axis}",
                    f"{', '.join(map(repr, unknown))} not among the parent's values"
                    f" for {axis!r} ({', '.join(inherited_axes[axis])})",
                    "a child can narrow an inherited axis, not extend it",
                )
            narrowed[axis] = listed
        else:
            new_axes[axis] = listed
    all_axes = [*inherited_axes, *new_axes]

    def check_entry(kind: str, index: int, entry: Mapping[str, str], *, axes_only: bool) -> bool:
        ok = True
        for key, value in entry.items():
            if key in inherited_axes or key in new_axes:
                known = inherited_axes.get(key) or list(new_axes.get(key, ()))
                if value not in known:
                    problems.add(
                        spec,
                        f"matrix.{kind}[{index}].{key}",
                        f"{values.shown(value)} is not a value of axis {key!r}"
                        f" ({', '.join(known)})",
                        did_you_mean(value, known),
                    )
                    ok = False
            elif axes_only:
                problems.add(
                    spec,
                    f"matrix.{kind}[{index}].{key}",
                    f"unknown matrix axis {values.shown(key)}",
                    did_you_mean(key, all_axes) or f"axes: {', '.join(all_axes) or 'none'}",
                )
                ok = False
        return ok

    excludes = [
        e
        for i, e in enumerate(matrix.get("exclude", []))
        if check_entry("exclude", i, e, axes_only=True)
    ]
    includes = matrix.get("include", [])
    for i, e in enumerate(includes):
        check_entry("include", i, e, axes_only=False)

    kept = [
        parent
        for parent in parents
        if not any(
            (dict(parent.matrix) if parent else {}).get(axis) not in allowed
            for axis, allowed in narrowed.items()
        )
    ]
    if _too_large(spec, matrix, len(kept) * math.prod(map(len, new_axes.values())), problems):
        return []
    results = []
    for parent in kept:
        base_ctx = dict(parent.matrix) if parent else {}
        extra_ctx = dict(parent.context) if parent else {}
        for combo in itertools.product(*new_axes.values()):
            axis_values = {**base_ctx, **dict(zip(new_axes, combo, strict=True))}
            if any(all(axis_values.get(k) == v for k, v in e.items()) for e in excludes):
                continue
            ctx = {**extra_ctx, **axis_values}
            for entry in includes:
                matches = all(
                    axis_values.get(k) == v
                    for k, v in entry.items()
                    if k in axis_values or k in all_axes
                )
                if matches:
                    ctx.update({k: v for k, v in entry.items() if k not in all_axes})
            results.append((parent, ctx, tuple((axis, axis_values[axis]) for axis in all_axes)))
    for i, entry in enumerate(includes):
        if not any(
            all(ctx.get(k) == v for k, v in entry.items() if k in all_axes) for _, ctx, _ in results
        ):
            problems.add(
                spec,
                f"matrix.include[{i}]",
                "this include matches no variant",
                "check the axis values it names",
            )
    if not results and not problems.items:
        problems.add(spec, "matrix", "the matrix leaves no variant (everything is excluded)")
    return results


def _slug(axis_values: tuple[tuple[str, str], ...]) -> str:
    if not axis_values:
        return "default"
    return "-".join(v for _, v in axis_values)


def canonical(obj: Any) -> Any:
    """A JSON-ready canonical form: dataclasses as dicts, bytes as their SHA-256, sorted keys."""
    if hasattr(obj, "__dataclass_fields__"):
        return canonical(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, bytes):
        return {"sha256": hashlib.sha256(obj).hexdigest()}
    return obj


def digest_of(image_plan: ir.ImagePlan, parent_digest: str | None) -> str:
    """Content digest of an image plan (smoke tests excluded: they do not change the image)."""
    body = canonical(replace(image_plan, tests=()))
    payload = json.dumps(
        {"format": DIGEST_FORMAT, "parent": parent_digest, "plan": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def _tensorflow(
    content: Content, versions: dict[str, str], report: content_builder.Report
) -> TensorflowInstall | None:
    tf = content.components.tensorflow
    if tf is None:
        return None
    python = (
        content.components.python.version if content.components.python else versions.get("python")
    )
    if python is None:
        report(
            "components.tensorflow",
            "TensorFlow needs Python: add a `python` component here or in a parent spec",
        )
        return None
    cuda = content.components.cuda
    cuda_version = cuda.version if cuda else versions.get("cuda")
    cudnn_version = (cuda.cudnn if cuda else None) or versions.get("cudnn")
    try:
        if tf.accelerator == "cuda" and cuda_version is not None:
            config = compat.check_tensorflow(tf.version, python, cuda_version, cudnn_version)
        else:
            config = compat.check_tensorflow(tf.version, python)
    except IncompatibleVersions as exc:
        report("components.tensorflow.version", exc.message, exc.hint)
        return None
    pin = f"=={tf.version}" if tf.version.count(".") >= 2 else f"=={tf.version}.*"  # noqa: PLR2004
    if tf.accelerator == "cpu":
        return TensorflowInstall(requirement=f"{config.cpu_package}{pin}", cuda=None, cudnn=None)
    if cuda is None and "cuda" not in versions:
        if not config.and_cuda_extra:
            report(
                "components.tensorflow.accelerator",
                f"TensorFlow {tf.version} has no `tensorflow[and-cuda]` extra to bring CUDA",
                f"add a `cuda` component with source: system (TensorFlow {config.tensorflow}"
                f" wants CUDA {config.cuda}, cuDNN {config.cudnn})",
            )
            return None
        return TensorflowInstall(
            requirement=f"tensorflow[and-cuda]{pin}", cuda=config.cuda, cudnn=config.cudnn
        )
    if cuda is not None and cuda.source == "pip":
        return TensorflowInstall(
            requirement=f"tensorflow[and-cuda]{pin}",
            cuda=cuda.version,
            cudnn=cuda.cudnn or config.cudnn,
        )
    return TensorflowInstall(requirement=f"tensorflow{pin}", cuda=cuda_version, cudnn=cudnn_version)


#: The wheels that bring CUDA and cuDNN with ``tensorflow[and-cuda]``, newest CUDA first.
_CUDA_WHEELS = (
    ("nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12"),
    ("nvidia-cuda-runtime-cu11", "nvidia-cudnn-cu11"),
)


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _locked_cuda(
    tf: TensorflowInstall, lock: lockfile.Lock, report: content_builder.Report
) -> TensorflowInstall | None:
    """What the lock installs decides the CUDA and cuDNN versions (labels, checks, driver).

    ``tensorflow[and-cuda]`` declares ranges for NVIDIA's wheels; the table says what TensorFlow
    was tested with. Allowed: the same major version, a minor one at least the table's (what the
    ranges allow and NVIDIA's minor-version compatibility covers).
    """
    locked = lockfile.versions(lock, [name for pair in _CUDA_WHEELS for name in pair])
    for runtime, cudnn in _CUDA_WHEELS:
        if runtime not in locked:
            continue
        cuda_version = _major_minor(locked[runtime])
        cudnn_version = _major_minor(locked[cudnn]) if cudnn in locked else tf.cudnn
        for what, have, tested in (
            ("CUDA", cuda_version, tf.cuda),
            ("cuDNN", cudnn_version, tf.cudnn),
        ):
            if have is None or tested is None:
                continue
            have_v, tested_v = (tuple(int(p) for p in v.split(".")[:2]) for v in (have, tested))
            if have_v[0] != tested_v[0] or have_v < tested_v:
                report(
                    "components.tensorflow",
                    f"the lock installs {what} {have} ({runtime if what == 'CUDA' else cudnn}),"
                    f" but TensorFlow was tested with {what} {tested}: another major version,"
                    " or an older minor one",
                    "pin the NVIDIA wheels in the spec's pip requirements, or re-lock"
                    " (hepml-images lock --upgrade SPEC)",
                )
                return None
        return replace(tf, cuda=cuda_version, cudnn=cudnn_version)
    return tf


def _check_versions(
    content: Content,
    family: str,
    release: str | None,
    inherited: Handover,
    report: content_builder.Report,
) -> None:
    comps = content.components
    if comps.python is not None and comps.python.source == "system" and release is not None:
        try:
            shipped = compat.distro_python(family, release)
        except IncompatibleVersions:
            shipped = ()
        if shipped and comps.python.version not in shipped:
            report(
                "components.python.version",
                f"Python {comps.python.version} is not packaged for {family} {release}"
                f" (it ships {', '.join(shipped)})",
                f"use version {shipped[-1]!r}, or `source: existing` with an interpreter"
                " the base image already has",
            )
    if comps.python is not None and inherited.python is not None:
        report(
            "components.python",
            f"the parent image already has a Python venv at {inherited.python.venv}",
            "install packages with the `pip` component instead",
        )
    if (comps.pip is not None) and comps.python is None and inherited.python is None:
        report(
            "components.pip", "pip needs Python: add a `python` component here or in a parent spec"
        )
    cpu = comps.tensorflow is not None and comps.tensorflow.accelerator == "cpu"
    if cpu and comps.cuda is not None:
        report(
            "components.cuda",
            "CUDA is installed, but tensorflow's accelerator is cpu",
            "drop the cuda component for cpu variants (`enabled: ${{ matrix.NAME }}`),"
            " or use accelerator: cuda",
        )
    elif cpu and inherited.versions and dict(inherited.versions).get("accelerator") == "cuda":
        report(
            "components.tensorflow.accelerator",
            "tensorflow's accelerator is cpu, but the parent image has CUDA",
            "extend a parent variant without CUDA, or use accelerator: cuda",
        )
    if comps.cuda is not None:
        try:
            compat.driver_requirement(comps.cuda.version)
        except IncompatibleVersions as exc:
            report("components.cuda.version", exc.message, exc.hint)
        if comps.cuda.source == "pip" and (
            comps.tensorflow is None or comps.tensorflow.accelerator != "cuda"
        ):
            report(
                "components.cuda.source",
                "CUDA from pip comes with `tensorflow` (accelerator: cuda) in the same spec",
                "use source: system or image",
            )


def _versions(
    content: Content,
    inherited: Handover,
    family: str,
    release: str | None,
    tf: TensorflowInstall | None,
) -> dict[str, str]:
    versions = dict(inherited.versions)
    versions["family"] = family
    if release:
        versions["release"] = release
    comps = content.components
    if comps.analysisbase:
        versions["analysisbase"] = comps.analysisbase.release
    if comps.hdf5:
        versions["hdf5"] = comps.hdf5.version or "distro"
    if comps.python:
        versions["python"] = comps.python.version
    if comps.cuda:
        versions["cuda"] = comps.cuda.version
        if comps.cuda.cudnn:
            versions["cudnn"] = comps.cuda.cudnn
    if comps.tensorflow:
        versions["tensorflow"] = comps.tensorflow.version
        versions["accelerator"] = comps.tensorflow.accelerator
        if tf is not None and tf.cuda:
            versions["cuda"] = tf.cuda
            if tf.cudnn:
                versions["cudnn"] = tf.cudnn
    if "cuda" in versions and comps.cuda:
        versions["accelerator"] = "cuda"
    return dict(sorted(versions.items()))


def _base(content: Content, parent: ResolvedVariant | None) -> ir.Base:
    if parent is not None:
        return ir.FromParent(
            spec=parent.spec,
            slug=parent.slug,
            digest=parent.digest,
            ref=parent.content_ref,
        )
    base = content.base
    if base is None:  # pragma: no cover - the schema requires base or extends
        raise AssertionError("spec without base or extends")
    if isinstance(base, Bootstrap):
        argv = (
            "mmdebstrap",
            f"--variant={base.variant}",
            f"--components={','.join(base.components)}",
            *((f"--include={','.join(sorted(base.packages))}",) if base.packages else ()),
            '--aptopt=Acquire::Check-Valid-Until "false"',
            (
                "--customize-hook=rm -rf"
                ' "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/* "$1/var/log"/*.log'
                ' "$1/etc/resolv.conf" "$1/etc/hostname"'
            ),
            base.suite,
            "rootfs.tar",
            base.mirror,
        )
        return ir.FromBootstrap(
            suite=base.suite,
            variant=base.variant,
            mirror=base.mirror,
            components=base.components,
            packages=tuple(sorted(base.packages)),
            argv=argv,
            rootfs="rootfs.tar",
        )
    ref = base.image + (f"@{base.digest}" if base.digest else "")
    return ir.FromImage(ref=ref)


def _base_name(base: ir.Base) -> str | None:
    """What the image is built FROM, as a reference (none for a bootstrapped root filesystem)."""
    if isinstance(base, ir.FromBootstrap):
        return None
    return base.ref


def _expand_tags(
    templates: Iterable[str],
    context: Mapping[str, str],
    path: str,
    report: content_builder.Report,
) -> tuple[str, ...]:
    out: list[str] = []
    for index, template in enumerate(templates):
        counted = _Counted(report)
        text = _substitute(template, context, counted, f"{path}[{index}]")
        try:
            out.append(values.tag(text))
        except values.ValueProblem as exc:
            if not counted.count:  # a tag is never dropped in silence
                report(f"{path}[{index}]", exc.message, exc.hint)
    return tuple(dict.fromkeys(out))


class _Counted:
    """A ``Report`` that passes problems on and counts them."""

    def __init__(self, report: content_builder.Report) -> None:
        self.report = report
        self.count = 0

    def __call__(self, path: str, message: str, hint: str | None = None) -> None:
        self.count += 1
        self.report(path, message, hint)


def resolve(specset: SpecSet, *, check_locks: bool = True) -> tuple[ResolvedVariant, ...]:
    """Resolve every spec of the set into variants, parents first.

    A variant whose lock file is there is planned from it (exactly its packages). A lock that is
    stale (resolved from other inputs than the spec asks for now), unreadable, or missing for a
    shipped spec is a problem; a user's spec without locks installs unpinned, with a note.
    ``check_locks=False`` (for ``hepml-images lock``) plans from fresh locks only and reports no
    lock problems.
    """
    problems = _Problems()
    specs = specset.specs
    order = _order(specs, problems)
    problems.raise_if_any()
    done: dict[str, list[ResolvedVariant]] = {}
    result: list[ResolvedVariant] = []
    published: dict[tuple[str, str], ResolvedVariant] = {}
    for name in order:
        spec = specs[name]
        parent_name = spec.data.get("extends")
        if isinstance(parent_name, str):
            parents: list[ResolvedVariant | None] = list(done.get(parent_name, []))
            if not parents:
                continue  # the parent failed; its problems are reported
        else:
            parents = [None]
        variants = []
        for parent, ctx, axis_values in _combinations(spec, parents, problems):
            variant = _resolve_one(
                spec, parent, ctx, axis_values, problems, check_locks=check_locks
            )
            if variant is not None:
                variants.append(variant)
        seen_tags: dict[str, str] = {}
        for variant in variants:
            for tag in variant.tags:
                other = seen_tags.setdefault(tag, variant.slug)
                if other != variant.slug:
                    problems.add(
                        spec,
                        "tags",
                        f"tag {tag!r} is given to variants {other} and {variant.slug}",
                        "put a ${{ matrix.NAME }} in every tag template of a spec with a matrix",
                    )
        _published_twice(spec, variants, published, problems)
        slugs = [v.slug for v in variants]
        if len(set(slugs)) != len(slugs):
            problems.add(
                spec,
                "matrix",
                "two variants get the same name; matrix values must differ between axes",
            )
        done[name] = variants
        result.extend(variants)
    problems.raise_if_any()
    return tuple(result)


def _published_twice(
    spec: SpecFile,
    variants: Sequence[ResolvedVariant],
    published: dict[tuple[str, str], ResolvedVariant],
    problems: _Problems,
) -> None:
    """Report a repository:tag that two variants (of this spec or of any before it) would push.

    A spec without ``publish.repositories`` is pushed to ``REGISTRY/<spec name>``, which no other
    spec shares; ``publish.repositories`` may be shared between specs.
    """
    for variant in variants:
        targets = variant.content.publish.repositories or (f"<registry>/{variant.spec}",)
        key = "publish.tags" if variant.content.publish.tags else "tags"
        for tag in dict.fromkeys((*variant.publish_tags, *variant.immutable_tags)):
            for repository in targets:
                other = published.setdefault((repository, tag), variant)
                if other is not variant:
                    problems.add(
                        spec,
                        key,
                        f"{repository}:{tag} would be published by {other.key} and {variant.key}",
                        "give every variant its own tags (a ${{ matrix.NAME }} in each template),"
                        " and specs that share a repository different tags",
                    )


def _resolve_one(  # noqa: PLR0913 - check_locks is the one keyword
    spec: SpecFile,
    parent: ResolvedVariant | None,
    ctx: dict[str, str],
    axis_values: tuple[tuple[str, str], ...],
    problems: _Problems,
    *,
    check_locks: bool = True,
) -> ResolvedVariant | None:
    slug = _slug(axis_values)
    variant_suffix = f" (variant {slug})" if axis_values else ""

    def report(path: str, message: str, hint: str | None = None) -> None:
        problems.add(
            spec,
            path,
            message + variant_suffix if "${{" in str(_raw_at(spec.data, path)) else message,
            hint,
        )

    for axis, value in axis_values:
        try:
            values.word(value, "matrix value")
        except values.ValueProblem as exc:  # noqa: PERF203 - stops at the first bad value
            problems.add(spec, f"matrix.{axis}", exc.message, exc.hint)
            return None
    try:
        values.tag(slug)  # the local image is hepml/<spec>:<slug>
    except values.ValueProblem:
        problems.add(
            spec,
            "matrix",
            f"the variant name {values.shown(slug)} (its matrix values joined by -) is"
            f" {len(slug)} characters long; as a tag it may have {values.MAX_TAG_CHARS}",
            "use shorter matrix values",
        )
        return None
    data = spec.data
    context = {f"matrix.{k}": v for k, v in ctx.items()}
    context.update(
        {"spec.name": str(data["name"]), "spec.version": str(data.get("version", "0.1.0"))}
    )
    before_substitution = len(problems.items)
    substituted = {
        k: (v if k in _NOT_SUBSTITUTED else _substitute(v, context, report, k))
        for k, v in data.items()
    }
    if len(problems.items) > before_substitution:
        return None  # values that still hold an expression would only give misleading problems
    inherited = parent.handover if parent else None
    content = content_builder.build(
        substituted,
        family=inherited.family if inherited else None,
        attachments=spec.attachments,
        report=report,
    )
    if content is None:
        return None
    if inherited is None:
        start = content.base
        if start is None:  # pragma: no cover - the schema requires base or extends
            return None
        release = start.suite if isinstance(start, Bootstrap) else start.release
        inherited = Handover(family=start.family, release=release)
    before = len(problems.items)
    _check_versions(content, inherited.family, inherited.release, inherited, report)
    tf = _tensorflow(content, dict(inherited.versions), report)
    if len(problems.items) > before:
        return None
    versions = _versions(content, inherited, inherited.family, inherited.release, tf)
    image_base = _base(content, parent)
    inputs = _lock_inputs(content, inherited, tf, image_base, parent)
    lock, lock_note = _variant_lock(spec, slug, inputs, problems, check_locks=check_locks)
    if lock is None and lock_note is None and check_locks:
        return None  # a lock problem, reported
    if lock is not None and tf is not None and tf.cuda is not None:
        tf = _locked_cuda(tf, lock, report)
        if tf is None:
            return None
        versions = _versions(content, inherited, inherited.family, inherited.release, tf)
    planned: Planned = plan(
        content,
        parent=inherited,
        base=image_base,
        tensorflow=tf,
        versions=tuple(versions.items()),
        lock=lock,
        parent_lock=parent.lock if parent else None,
    )
    labels = (
        *provenance.content_labels(
            content.name, content.description, content.version, _base_name(image_base)
        ),
        *content.labels,
        ("io.hepml.spec", content.name),
        ("io.hepml.variant", slug),
        *((f"io.hepml.version.{k}", v) for k, v in versions.items()),
        *((("io.hepml.lock", lock.sha256),) if lock is not None else ()),
    )
    own_entrypoint = _entrypoint(content, planned)
    own_cmd = _cmd(content, image_base)
    # Docker: a child inherits ENTRYPOINT and CMD; setting ENTRYPOINT resets the inherited CMD.
    runtime = ir.Runtime(
        entrypoint=own_entrypoint if own_entrypoint is not None else inherited.entrypoint,
        cmd=own_cmd
        if own_cmd is not None
        else (None if own_entrypoint is not None else inherited.cmd),
        workdir=planned.handover.workdir,
    )
    steps, plan_context = planned.steps, planned.context
    if not isinstance(image_base, ir.FromBootstrap):  # a bootstrapped base stays one pure layer
        # what makes the image: smoke tests, tags and publishing settings stay out, so that
        # changing them does not change the image (nor its digest)
        described = {k: v for k, v in canonical(content).items() if k not in _NOT_IN_IMAGE}
        spec_json = json.dumps(described, indent=2, sort_keys=True).encode() + b"\n"
        extra_steps, extra_context = components_manifest(
            spec_json, inherited.family, planned.handover.python, planned.handover.wrapper
        )
        # before a final USER switch: the manifest is written as root
        cut = len(steps) - 1 if steps and isinstance(steps[-1], ir.User) else len(steps)
        steps = (*steps[:cut], *extra_steps, *steps[cut:])
        plan_context = (*plan_context, *extra_context)
    image_plan = ir.ImagePlan(
        name=content.name,
        slug=slug,
        help=content.description,
        base=image_base,
        family=inherited.family,
        inherited_env=inherited.env,
        inherited_workdir=inherited.workdir,
        steps=steps,
        entrypoint=own_entrypoint,
        cmd=own_cmd,
        runtime=runtime,
        labels=tuple(sorted(dict(labels).items())),
        tests=planned.handover.tests,
        context=tuple(sorted(plan_context, key=lambda f: f.name)),
    )
    digest = digest_of(image_plan, parent.digest if parent else None)
    image_plan = replace(
        image_plan,
        labels=tuple(sorted({**dict(image_plan.labels), "io.hepml.digest": digest}.items())),
    )
    tag_context = {
        **context,
        **{f"versions.{k}": v for k, v in versions.items()},
        "spec.digest": digest.split(":", 1)[1][:12],
    }
    tags = _expand_tags(content.tags or (slug,), tag_context, "tags", report)
    publish_tags = (
        _expand_tags(content.publish.tags, tag_context, "publish.tags", report)
        if content.publish.tags
        else tags
    )
    immutable = _expand_tags(content.publish.immutable, tag_context, "publish.immutable", report)
    return ResolvedVariant(
        spec=content.name,
        source=str(spec.path),
        matrix=axis_values,
        context=tuple(sorted(ctx.items())),
        slug=slug,
        content=content,
        parent=parent,
        versions=tuple(versions.items()),
        tags=tags,
        publish_tags=publish_tags,
        immutable_tags=immutable,
        plan=image_plan,
        digest=digest,
        handover=replace(planned.handover, entrypoint=runtime.entrypoint, cmd=runtime.cmd),
        lock_inputs=inputs,
        lock=lock,
        lock_note=lock_note,
    )


def _lock_inputs(
    content: Content,
    inherited: Handover,
    tf: TensorflowInstall | None,
    base: ir.Base,
    parent: ResolvedVariant | None,
) -> lockfile.Inputs:
    """What the variant's lock is resolved from (``lockfile.Inputs``)."""
    requirements: list[str] = [tf.requirement] if tf is not None else []
    pip = content.components.pip
    index_url = None
    if pip is not None and not pip.require_hashes:
        requirements.extend(pip.requirements)
        if pip.file_content is not None:
            requirements.extend(lockfile.requirement_lines(pip.file_content))
        index_url = pip.index_url
    python_version = (
        content.components.python.version
        if content.components.python is not None
        else dict(inherited.versions).get("python")
    )
    wants_python = bool(requirements) or (
        parent is not None and parent.lock_inputs.python is not None
    )
    base_text = None
    if isinstance(base, ir.FromImage):
        base_text = base.ref
    elif isinstance(base, ir.FromBootstrap):
        base_text = " ".join(("bootstrap", base.suite, base.variant, base.mirror, *base.packages))
    return lockfile.Inputs(
        python=python_version if wants_python else None,
        platform=lockfile.python_platform(inherited.family, inherited.release)
        if wants_python
        else None,
        requirements=tuple(requirements),
        index_url=index_url,
        os_packages=os_packages(content, inherited.family),
        parent=parent.lock.sha256 if parent is not None and parent.lock is not None else None,
        base=base_text,
    )


def _variant_lock(
    spec: SpecFile,
    slug: str,
    inputs: lockfile.Inputs,
    problems: _Problems,
    *,
    check_locks: bool,
) -> tuple[lockfile.Lock | None, str | None]:
    """The variant's lock if it is there and fresh; else a note, or a problem (None, None)."""
    name = lockfile.lock_name(slug)
    where = f"{lockfile.lock_dir(Path(spec.path.name))}/{name}"
    fix = f"run `hepml-images lock {spec.name}` to write it"
    raw = spec.locks.get(name)
    if raw is None:
        if not check_locks:
            return None, "no lock"
        if spec.shipped:
            problems.add(spec, "", f"no lock file for variant {slug} ({where})", fix)
            return None, None
        return None, (
            f"{spec.name}:{slug} has no lock file ({where}): its packages are installed"
            f" unpinned; `hepml-images lock {spec.name}` pins them"
        )
    try:
        lock = lockfile.parse(raw)
    except lockfile.LockProblem as exc:
        if not check_locks:
            return None, "unreadable lock"
        problems.add(spec, "", f"lock file {where} cannot be read: {exc.message}", fix)
        return None, None
    changes = lockfile.stale(lock, inputs)
    if changes:
        if not check_locks:
            return None, "stale lock"
        shown = "; ".join(changes[:_STALE_SHOWN]) + (" …" if len(changes) > _STALE_SHOWN else "")
        problems.add(
            spec,
            "",
            f"the lock of variant {slug} ({where}) is stale: {shown}",
            f"run `hepml-images lock {spec.name}` to lock it again",
        )
        return None, None
    return lock, None


#: Changes named in a stale-lock problem.
_STALE_SHOWN = 6


def _cmd(content: Content, base: ir.Base) -> tuple[str, ...] | None:
    if content.cmd is not None:
        return content.cmd
    if content.components.analysisbase is not None or isinstance(base, ir.FromBootstrap):
        return ("/bin/bash",)
    return None


def _entrypoint(content: Content, planned: Planned) -> tuple[str, ...] | None:
    if content.entrypoint is not None:
        return content.entrypoint
    if content.components.analysisbase is not None:
        return planned.handover.wrapper
    return None


def _raw_at(data: Mapping[str, Any], path: str) -> Any:
    node: Any = data
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node


def select(
    variants: Sequence[ResolvedVariant], spec_names: Sequence[str], selection: Sequence[str]
) -> tuple[ResolvedVariant, ...]:
    """The variants of ``spec_names`` matching every ``KEY=VALUE`` in ``selection``."""
    wanted: dict[str, str] = {}
    for item in selection:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(
                f"--variant {item!r} is not KEY=VALUE", hint="for example --variant accelerator=cpu"
            )
        key, value = key.strip(), value.strip()
        if key in wanted:
            raise UsageError(
                f"--variant {key}= is given twice ({key}={wanted[key]} and {key}={value})",
                hint="select one value per matrix key; run the command once per value",
            )
        wanted[key] = value
    chosen = [v for v in variants if v.spec in spec_names]
    axes = {axis for v in chosen for axis, _ in v.matrix}
    for key, value in wanted.items():
        if key not in axes:
            hint = did_you_mean(key, axes) or (
                f"matrix axes: {', '.join(sorted(axes))}" if axes else "these specs have no matrix"
            )
            raise UsageError(f"unknown matrix key {key!r} in --variant {key}={value}", hint=hint)
        known = sorted({val for v in chosen for axis, val in v.matrix if axis == key})
        if value not in known:
            raise UsageError(
                f"no variant has {key}={value}",
                hint=did_you_mean(value, known) or f"values of {key}: {', '.join(known)}",
            )
    picked = tuple(
        v for v in chosen if all(dict(v.matrix).get(k, val) == val for k, val in wanted.items())
    )
    if not picked:
        raise UsageError(
            f"no variant matches {' '.join(selection)}",
            hint="run `hepml-images list` to see the variants",
        )
    return picked
