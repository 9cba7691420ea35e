"""Spec files on disk → ``SpecFile`` objects. The only module that reads spec files.

Input: SPEC arguments (a path to a YAML file or the name of a spec in a search directory).
Output: a ``SpecSet`` holding every named spec and, transitively, the specs they extend.
Every problem found is collected and raised together as one ``SpecError``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from hepml_images import lockfile
from hepml_images.errors import Problem, SpecError
from hepml_images.resources import data_path
from hepml_images.spec import files, values, yamlload
from hepml_images.spec.model import SpecFile
from hepml_images.spec.schema import EXPRESSION, SPEC_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_VALIDATOR = jsonschema.Draft202012Validator(SPEC_SCHEMA)
SUFFIXES = (".yaml", ".yml")


#: Longest word that gets a "did you mean" (difflib's cost grows with the square of lengths).
SUGGEST_MAX_CHARS = 64
#: Most candidates compared for a "did you mean" (those closest in length are kept).
SUGGEST_MAX_CHOICES = 1000


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """Return a "did you mean …?" hint for a misspelt word, or None.

    Bounded in cost whatever the input: a long word gets no suggestion, candidates whose length
    rules out a close match are skipped (that changes no answer), and at most
    ``SUGGEST_MAX_CHOICES`` are compared.
    """
    if len(word) > SUGGEST_MAX_CHARS:
        return None
    # difflib's ratio is 2*matches/(len(a)+len(b)); 0.6 needs the lengths within 2/3 of the word
    slack = -(-2 * len(word) // 3)
    near = sorted(
        {c for c in choices if len(c) <= SUGGEST_MAX_CHARS and abs(len(c) - len(word)) <= slack}
    )
    if len(near) > SUGGEST_MAX_CHOICES:
        near = sorted(near, key=lambda c: (abs(len(c) - len(word)), c))[:SUGGEST_MAX_CHOICES]
        near.sort()
    close = difflib.get_close_matches(word, near, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


@dataclass
class Trace:
    """What a ``load`` depended on, for the no-op cache (``hepml_images.noop``).

    Paths are absolute (as the loader opened them, not resolved). ``files``: every file read, its
    resolved path and the SHA-256 of the bytes read; ``dirs``: directories whose resolved path
    was checked against (attachments must stay inside their spec's); ``absent``: paths whose
    appearance would change the answer, with what must stay true of them (``file``: not a regular
    file, ``path``: not there at all). The same files with the same bytes, the same resolved
    paths and the same absences: the same ``SpecSet``.
    """

    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)

    def read(self, path: Path, data: bytes) -> None:
        """``path`` was read and held ``data``."""
        self.files[str(path.absolute())] = (str(path.resolve()), hashlib.sha256(data).hexdigest())

    def not_there(self, path: Path, what: str = "file") -> None:
        """``path`` was looked for and was not there (``what``: see the class docstring)."""
        self.absent.setdefault(str(path.absolute()), what)

    def looked_up(self, name: str, searched: Sequence[Path], found: Path | None) -> None:
        """Spec ``name`` was looked for in ``searched`` directories, in order, and found there."""
        for directory in searched:
            for suffix in SUFFIXES:
                candidate = directory / f"{name}{suffix}"
                if found is not None and candidate == found:
                    return  # the files after the one found cannot replace it
                self.not_there(candidate)


@dataclass(frozen=True)
class SpecSet:
    """Specs by name, plus the names the user asked for (in the order asked)."""

    specs: dict[str, SpecFile]
    requested: tuple[str, ...]


def _schema_at(path: Sequence[str | int]) -> dict[str, Any]:
    """The sub-schema that describes the value at ``path`` (best effort, for hints)."""
    node: dict[str, Any] = SPEC_SCHEMA
    for key in path:
        if isinstance(key, int):
            node = node.get("items", {})
            continue
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return node


def _key_path(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path = yamlload.join(path, part)
    return path


_TYPE_NAMES = {
    "string": "a string",
    "object": "a mapping (key: value)",
    "array": "a list",
    "boolean": "true or false",
    "integer": "an integer",
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return values.shown(value)


def _schema_problems(data: Any, filename: str, document: yamlload.Document) -> list[Problem]:
    problems: list[Problem] = []
    for error in sorted(
        _VALIDATOR.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))
    ):
        problems.extend(_translate(error, filename, document))
    # one message per place is enough
    unique: dict[tuple[int | None, str, str], Problem] = {}
    for problem in problems:
        unique.setdefault((problem.line, problem.path, problem.message), problem)
    return list(unique.values())


def _translate(  # noqa: PLR0911 - one return per kind of schema error, in one flat list
    error: jsonschema.ValidationError, filename: str, document: yamlload.Document
) -> list[Problem]:
    parts = list(error.absolute_path)
    path = _key_path(parts)
    line = document.line(path)

    def problem(message: str, hint: str | None = None, at: str | None = None) -> Problem:
        where = path if at is None else at
        return Problem(filename, document.line(where) if at else line, where, message, hint)

    validator = error.validator
    # jsonschema's stubs type these as possibly ``Unset``; on a reported error they are set
    rule: Any = error.validator_value
    schema: Any = error.schema
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(schema.get("properties", {}))
        out = []
        for key in sorted(set(error.instance) - allowed):
            what = "component" if path == "components" else "key"
            out.append(
                problem(
                    f"unknown {what} {values.shown(key)}",
                    did_you_mean(key, allowed) or f"allowed: {', '.join(sorted(allowed))}",
                    yamlload.join(path, key),
                )
            )
        return out
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [problem(f"missing required key {missing!r}")]
    if validator == "type":
        expected = rule
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return [problem(f"expected {wanted}, got {_type_name(error.instance)}")]
    if validator == "enum":
        choices = [str(c) for c in rule]
        return [
            problem(
                f"expected one of {', '.join(choices)}; got {values.shown(error.instance)}",
                did_you_mean(str(error.instance), choices),
            )
        ]
    if validator == "anyOf":
        enum = next((b["enum"] for b in rule if "enum" in b), None)
        if enum is not None and isinstance(error.instance, str):
            return [
                problem(
                    f"expected one of {', '.join(enum)}; got {values.shown(error.instance)}",
                    did_you_mean(error.instance, enum),
                )
            ]
        types = [b.get("type") for b in rule if "type" in b]
        if "boolean" in types:
            return [problem(f"expected true or false, got {_type_name(error.instance)}")]
        branches: list[dict[str, Any]] = rule
        mapping = next((b for b in branches if b.get("type") == "object"), None)
        if mapping is not None and isinstance(error.instance, dict):
            sub = jsonschema.Draft202012Validator(mapping)
            inner = [
                _translate(_rebase(e, parts), filename, document)
                for e in sub.iter_errors(error.instance)
            ]
            if inner:
                return [p for found in inner for p in found]
        if (
            isinstance(error.instance, (dict, list))
            or error.instance is None
            or isinstance(error.instance, bool)
        ):
            return [problem(f"expected a string or a mapping, got {_type_name(error.instance)}")]
        return [problem(error.message)]
    if validator == "oneOf":
        if path == "" and isinstance(error.instance, dict):
            both = "base" in error.instance and "extends" in error.instance
            if both:
                return [
                    problem(
                        "a spec has either `base` or `extends`, not both",
                        "a spec built FROM another spec's image takes its base from that spec",
                    )
                ]
            return [
                problem("a spec needs `base` (an image or a bootstrap) or `extends` (another spec)")
            ]
        if path == "base" and isinstance(error.instance, dict):
            branch = 1 if "bootstrap" in error.instance else 0
            if "bootstrap" in error.instance and set(error.instance) - {"bootstrap"}:
                extra = sorted(set(error.instance) - {"bootstrap"})
                return [
                    problem(
                        f"`base.bootstrap` cannot be combined with {', '.join(extra)}",
                        "use either `image:` + `family:` or `bootstrap:`",
                    )
                ]
            sub = jsonschema.Draft202012Validator(rule[branch])
            out = []
            for inner in sub.iter_errors(error.instance):
                out.extend(_translate(_rebase(inner, parts), filename, document))
            return out or [problem(error.message)]
        return [problem(f"expected {_type_name(error.instance)} to be a string or a mapping")]
    if validator == "pattern":
        if path == "name":
            return [
                problem(
                    f"spec name {values.shown(error.instance)} may contain only lower-case letters,"
                    " digits and dashes",
                    "it is also the image repository name",
                )
            ]
        return [problem(f"{values.shown(error.instance)} does not match the expected form")]
    if validator == "propertyNames":
        return [
            problem(
                f"matrix axis name {values.shown(error.instance)} must be lower-case letters,"
                " digits and _"
            )
        ]
    if validator == "minItems":
        return [problem("the list must not be empty")]
    return [problem(error.message)]


def _rebase(
    error: jsonschema.ValidationError, parts: list[str | int]
) -> jsonschema.ValidationError:
    """Make ``absolute_path`` of an error found in a sub-validation include the outer path."""
    inner = list(error.relative_path)  # the same deque as ``error.path``: copy it first
    if inner[: len(parts)] == parts:
        inner = inner[len(parts) :]
    error.relative_path.clear()
    error.relative_path.extend([*parts, *inner])
    return error


def read_spec(path: Path, *, shipped: bool = False, trace: Trace | None = None) -> SpecFile:
    """Read, parse and schema-check one spec file, and read the files it refers to."""
    filename = str(path)
    if path.is_dir():
        raise SpecError(
            [
                Problem(
                    filename,
                    None,
                    "",
                    "is a directory, not a spec file",
                    "give a .yaml file, or use `--specs DIR` with `list`",
                )
            ]
        )
    try:
        raw = files.read_regular(path, limit=yamlload.MAX_BYTES, what="the file")
    except files.FileProblem as exc:
        raise SpecError([Problem(filename, None, "", exc.message, exc.hint)]) from None
    if trace is not None:
        trace.read(path, raw)
    try:
        document = yamlload.parse(raw, filename)
    except yamlload.YamlProblem as exc:
        raise SpecError([exc.problem]) from None
    data = document.data
    if not isinstance(data, dict):
        # the text itself is not quoted: a file that is no spec may be anything
        got = _type_name(data) if isinstance(data, (list, bool)) or data is None else "text"
        raise SpecError(
            [
                Problem(
                    filename,
                    document.line(""),
                    "",
                    f"a spec is a mapping of keys (name:, base: …), got {got}",
                )
            ]
        )
    problems = _schema_problems(data, filename, document)
    name = data.get("name")
    if isinstance(name, str) and not problems:
        why = values.local_name_problem(name)
        if why is not None:
            problems.append(Problem(filename, document.line("name"), "name", why, None))
    spec = SpecFile(
        name=name if isinstance(name, str) else path.stem,
        path=path,
        data=data,
        document=document,
        attachments={},
        shipped=shipped,
    )
    if not problems:
        problems.extend(_read_attachments(spec, trace))
        problems.extend(_read_locks(spec, trace))
    if problems:
        raise SpecError(problems)
    return spec


def _read_locks(spec: SpecFile, trace: Trace | None = None) -> list[Problem]:
    """Read the spec's lock files (``<stem>.locks/pylock.*.toml`` beside it)."""
    directory = spec.path.parent / lockfile.lock_dir(Path(spec.path.name))
    if not directory.is_dir():
        if trace is not None:
            trace.not_there(directory, "path")
        return []
    problems = []
    for path in sorted(directory.iterdir()):
        if not lockfile.is_pylock_name(path.name):
            continue
        try:
            data = files.read_regular(path, limit=files.MAX_LOCK_BYTES, what="the lock file")
        except files.FileProblem as exc:
            problems.append(Problem(str(path), None, "", exc.message, exc.hint))
            continue
        spec.locks[path.name] = data
        if trace is not None:
            trace.read(path, data)
    return problems


def _attachment_paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    pip = data.get("components", {}).get("pip") or {}
    if isinstance(pip.get("file"), str):
        found.append(("components.pip.file", pip["file"]))
    for index, item in enumerate(data.get("files", []) or []):
        found.append((f"files[{index}].src", item["src"]))
    return found


def _read_attachments(spec: SpecFile, trace: Trace | None = None) -> list[Problem]:
    problems: list[Problem] = []
    filename = str(spec.path)
    for key, rel in _attachment_paths(spec.data):
        line = spec.document.line(key)
        if re.search(EXPRESSION, rel):
            problems.append(
                Problem(
                    filename,
                    line,
                    key,
                    "file paths cannot use ${{ }} expressions",
                    "list each file explicitly",
                )
            )
            continue
        try:
            values.rel_path(rel, "file")
        except values.ValueProblem as exc:
            problems.append(Problem(filename, line, key, exc.message, exc.hint))
            continue
        limit = files.MAX_LOCK_BYTES if key == "components.pip.file" else files.MAX_FILE_BYTES
        try:
            spec.attachments[rel] = files.read_inside(spec.path.parent, rel, limit=limit)
        except files.FileProblem as exc:
            problems.append(Problem(filename, line, key, exc.message, exc.hint))
        else:
            if trace is not None:
                trace.read(spec.path.parent / rel, spec.attachments[rel])
                trace.dirs[str(spec.path.parent.absolute())] = str(spec.path.parent.resolve())
    return problems


def shipped_dir() -> Path:
    """The directory of the specs shipped with the tool (in the wheel or the checkout)."""
    return data_path("specs")


def _spec_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())


def _looks_like_path(arg: str) -> bool:
    return arg.endswith(SUFFIXES) or "/" in arg or Path(arg).exists()


def load(
    arguments: Sequence[str],
    *,
    search: Sequence[Path] = (),
    contain: Path | None = None,
    trace: Trace | None = None,
) -> SpecSet:
    """Load the named specs and every spec they extend.

    A SPEC argument is a path to a YAML file or the name of a spec found in ``search`` (and then
    the shipped specs). A parent named by ``extends`` is looked up beside its child first. A spec
    found by name, and with ``contain`` every path argument too, must resolve inside the
    directory it was found in (a symbolic link out of it is a problem, and is not read).
    ``trace`` collects what the answer depended on (see ``Trace``).
    """
    problems: list[Problem] = []
    specs: dict[str, SpecFile] = {}
    requested: list[str] = []
    directories = [*search, shipped_dir()]
    index_cache: dict[Path, dict[str, Path]] = {}

    def index(directory: Path) -> dict[str, Path]:
        if directory not in index_cache:
            found: dict[str, Path] = {}
            if directory.is_dir():
                for path in _spec_files(directory):
                    found.setdefault(path.stem, path)
            index_cache[directory] = found
        return index_cache[directory]

    by_file: dict[Path, SpecFile] = {}
    shipped = shipped_dir().resolve()

    def add(path: Path, *, found_in: Path | None = None) -> SpecFile | None:
        resolved = path.resolve()
        if resolved in by_file:
            return by_file[resolved]
        if found_in is not None and not resolved.is_relative_to(found_in.resolve()):
            # found by name (a parent, a spec name, `list --specs`), not named by the user:
            # a link out of the directory must not make the loader read any file of the host
            problems.append(
                Problem(
                    str(path),
                    None,
                    "",
                    f"resolves (through a symbolic link) to a file outside {found_in}",
                    "copy the spec into the directory instead of linking to it",
                )
            )
            return None
        try:
            spec = read_spec(path, shipped=resolved.parent == shipped, trace=trace)
        except SpecError as exc:
            problems.extend(exc.problems)
            return None
        other = specs.get(spec.name)
        if other is not None:
            problems.append(
                Problem(
                    str(path),
                    spec.document.line("name"),
                    "name",
                    f"duplicate spec name {spec.name!r}: also defined in {other.path}",
                    "every spec needs its own name",
                )
            )
            return None
        specs[spec.name] = spec
        by_file[resolved] = spec
        return spec

    pending: list[SpecFile] = []
    for arg in arguments:
        if _looks_like_path(arg):
            spec = add(Path(arg), found_in=contain)
        else:
            hits = [d for d in directories if arg in index(d)]
            if trace is not None:
                trace.not_there(Path(arg), "path")  # else it would be a path argument
                if hits:
                    trace.looked_up(
                        arg, directories[: directories.index(hits[0]) + 1], index(hits[0])[arg]
                    )
            if not hits:
                names = sorted({n for d in directories for n in index(d)})
                problems.append(
                    Problem(
                        arg,
                        None,
                        "",
                        f"no spec file or shipped spec named {values.shown(arg)}",
                        did_you_mean(arg, names)
                        or "run `hepml-images list` to see the shipped specs",
                    )
                )
                continue
            spec = add(index(hits[0])[arg], found_in=hits[0])
        if spec is not None:
            requested.append(spec.name)
            pending.append(spec)

    while pending:
        spec = pending.pop()
        parent = spec.data.get("extends")
        if not isinstance(parent, str) or parent in specs:
            continue
        candidates = [spec.path.parent, *directories]
        hit = next((d for d in candidates if parent in index(d)), None)
        if trace is not None and hit is not None:
            trace.looked_up(parent, candidates[: candidates.index(hit) + 1], index(hit)[parent])
        if hit is None:
            siblings = sorted({n for d in candidates for n in index(d)})
            problems.append(
                Problem(
                    str(spec.path),
                    spec.document.line("extends"),
                    "extends",
                    f"parent spec {values.shown(parent)} not found"
                    " (looked beside this file and in the shipped specs)",
                    did_you_mean(parent, siblings),
                )
            )
            continue
        loaded = add(index(hit)[parent], found_in=hit)
        if loaded is not None:
            if loaded.name != parent:
                problems.append(
                    Problem(
                        str(loaded.path),
                        loaded.document.line("name"),
                        "name",
                        f"file {loaded.path.name} is named {loaded.name!r},"
                        f" but {spec.name!r} extends it as {parent!r}",
                        "a spec's file name should match its name",
                    )
                )
            pending.append(loaded)

    if problems:
        raise SpecError(problems)
    return SpecSet(specs, tuple(dict.fromkeys(requested)))


def load_directory(directory: Path) -> SpecSet:
    """Load every spec in a directory (for `list --specs DIR`)."""
    if not directory.is_dir():
        raise SpecError([Problem(str(directory), None, "", "not a directory")])
    return load([str(p) for p in _spec_files(directory)], search=[directory], contain=directory)
