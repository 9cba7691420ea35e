"""YAML text → plain Python data plus the line of every key path.

Input: the bytes of one spec file. Output: ``Document`` (nested dicts, lists and scalars, and a
map from key paths such as ``components.python.version`` to 1-based line numbers). Pure.

PyYAML's safe loader alone is not enough for user-facing errors: it accepts duplicate keys
silently (the last one wins), expands aliases without bound (a "billion laughs" document takes
the machine down) and reports tabs with a message nobody understands. This module composes the
node graph, which is linear in the size of the text, and builds the data itself with those checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Mapping

from hepml_images.errors import Problem

#: Largest spec file read, in bytes; specs are small, anything this large is a mistake.
MAX_BYTES = 1_000_000
#: Most nodes that a document may expand to once aliases are followed.
MAX_NODES = 100_000
#: Deepest nesting accepted; checked while the text is parsed, so that a document of a million
#: ``[`` ends in this problem, not in a RecursionError.
MAX_DEPTH = 64
#: Most text (scalars, keys and key paths) that a document may expand to once aliases are
#: followed: a large anchored scalar aliased many times stays a few nodes but many bytes.
MAX_EXPANDED_BYTES = 4 * 1024 * 1024

_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class Document:
    """Parsed YAML data and where each key path starts (1-based lines)."""

    data: Any
    lines: Mapping[str, int]

    def line(self, path: str) -> int | None:
        """Return the line of ``path`` or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""


class YamlProblem(Exception):  # noqa: N818 - carries a Problem to the loader
    """Raised inside this module; carries one ``Problem``."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def join(path: str, key: str | int) -> str:
    """Extend a key path: ``join("a", "b") == "a.b"``, ``join("a", 0) == "a[0]"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse(raw: bytes, filename: str) -> Document:
    """Parse one YAML document; raise ``YamlProblem`` with a clear message on bad input."""

    def problem(message: str, line: int | None = None, hint: str | None = None) -> YamlProblem:
        return YamlProblem(Problem(filename, line, "", message, hint))

    if len(raw) > MAX_BYTES:
        raise problem(f"file is {len(raw)} bytes; a spec may be at most {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise problem(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            line,
            "save the file as UTF-8",
        ) from None
    text = text.removeprefix("\ufeff")
    for number, content in enumerate(text.splitlines(), start=1):
        indent = content[: len(content) - len(content.lstrip(" \t"))]
        if "\t" in indent:
            raise problem(
                "tab character in indentation; YAML indentation must use spaces",
                number,
                "replace the tabs with spaces (most editors have a setting for this)",
            )
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise problem("the file is empty", None, "a spec needs at least `name:` and `base:`")
    try:
        node = yaml.compose(text, Loader=_make_loader(filename))
    except yaml.composer.ComposerError as exc:
        raise _marked(filename, exc) from None
    except yaml.YAMLError as exc:
        raise _marked(filename, exc) from None
    if node is None:
        raise problem("the file is empty", None, "a spec needs at least `name:` and `base:`")
    builder = _Builder(filename)
    data = builder.build(node, "", 0)
    return Document(data, dict(builder.lines))


def _make_loader(filename: str) -> type[yaml.SafeLoader]:
    """A safe loader whose composer stops at ``MAX_DEPTH`` (PyYAML composes recursively)."""

    class _DepthLimited(yaml.SafeLoader):
        trail: tuple[str, ...] = ("",)

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            # ``index`` is the key node of a mapping value, the position of a list item
            if parent is None:
                path = ""
            elif isinstance(index, yaml.ScalarNode):
                path = join(self.trail[-1], str(index.value)[:100])
            else:
                path = join(self.trail[-1], index if isinstance(index, int) else "?")
            if len(self.trail) > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise YamlProblem(
                    Problem(
                        filename,
                        event.start_mark.line + 1,
                        path,
                        f"nesting deeper than {MAX_DEPTH} levels",
                        f"a spec is nested a few levels deep; the limit is {MAX_DEPTH}",
                    )
                )
            saved = self.trail
            self.trail = (*saved, path)
            try:
                return super().compose_node(parent, index)
            finally:
                self.trail = saved

    return _DepthLimited


def _marked(filename: str, exc: yaml.YAMLError) -> YamlProblem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"malformed YAML: {what}" + (f" ({context})" if context else "")
    if "expected <document start>" in message or "but found another document" in message:
        message = "malformed YAML: a spec file holds exactly one YAML document"
    return YamlProblem(
        Problem(filename, line, "", message, "check the indentation and quoting near this line")
    )


class _Builder:
    """Turns a composed node graph into data, counting nodes as aliases are expanded."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[str, int] = {}
        self.count = 0
        self.size = 0
        self._constructor = yaml.SafeLoader("")

    def _fail(self, node: yaml.Node, path: str, message: str, hint: str | None = None) -> None:
        raise YamlProblem(Problem(self.filename, node.start_mark.line + 1, path, message, hint))

    def build(self, node: yaml.Node, path: str, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            self._fail(
                node,
                path,
                f"document expands to more than {MAX_NODES} values (YAML aliases nested too deep)",
                "write the values out instead of nesting anchors and aliases",
            )
        if depth > MAX_DEPTH:
            self._fail(node, path, f"nesting deeper than {MAX_DEPTH} levels")
        self.size += len(path) + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
        if self.size > MAX_EXPANDED_BYTES:
            self._fail(
                node,
                path,
                f"document expands to more than {MAX_EXPANDED_BYTES} bytes of text"
                " (YAML aliases repeat large values)",
                "write the values out instead of repeating large anchors",
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in {
            _MAP_TAG,
            _SEQ_TAG,
        }:
            self._fail(node, path, f"unsupported YAML tag {node.tag!r}", "remove the `!tag`")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, join(path, index), depth + 1)
                for index, item in enumerate(node.value)
            ]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._fail(
                    key_node,
                    path,
                    "YAML merge keys (`<<:`) are not supported",
                    "use `extends:` to share settings between specs",
                )
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, path, "a mapping key must be a plain string")
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                self._fail(
                    key_node,
                    join(path, key),
                    f"duplicate key {key!r} (first defined on line {seen[key]})",
                    "remove one of them; YAML would silently keep only the last",
                )
            seen[key] = line
            child = join(path, key)
            self.lines[child] = line
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self._fail(node, path, "unsupported YAML node")
        tag = node.tag
        if tag in {_BOOL_TAG, _NULL_TAG}:
            return self._constructor.construct_object(node, deep=True)
        if tag in {_STR_TAG, _INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG}:
            # Numbers stay the text the user wrote: `python: 3.10` means "3.10", not 3.1, and
            # `mode: 0644` means "0644", not 420. The schema decides what a field may hold.
            return str(node.value)
        self._fail(node, path, f"unsupported YAML tag {tag!r}", "remove the `!tag`")
        return None
