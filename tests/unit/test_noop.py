"""The no-op path (``hepml_images.noop``), against a real HTTP server on a Unix socket.

The server plays the engine's ``GET /images/{ref}/json`` (some answers chunked, as the Docker
Engine sends larger ones); the record is written by the pipeline's own ``remember`` from a real
resolution of a user's specs in a temporary directory. Every kind of change must make the fast
path step aside (``answer`` returns None), and what it prints must be what the full path prints.
"""

from __future__ import annotations

import io
import json
import os
import re
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import noop, pipeline
from hepml_images.build.graph import Outcome, State, closure
from hepml_images.engine import buildkit
from hepml_images.spec import load as spec_load

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hepml_images.resolve import ResolvedVariant

PARENT = """\
name: my-parent
extends: debian-base
description: a user's parent spec
version: "1.0.0"
env:
  COLOUR: blue
"""
CHILD = """\
name: my-child
extends: my-parent
description: a user's child spec with a file
version: "1.0.0"
matrix:
  flavor: [a, b]
env:
  FLAVOR: ${{ matrix.flavor }}
files:
  - src: data/hello.txt
    dest: /opt/hello.txt
"""
#: Modules the fast path must not import (the full path's weight).
HEAVY = ("docker", "jsonschema", "jinja2", "typer", "rich", "yaml", "requests", "spython")


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    images: dict[str, dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Engine

    def do_GET(self) -> None:
        match = re.fullmatch(r"/images/(.+)/json", self.path)
        found = self.server.images.get(match.group(1)) if match else None
        body = json.dumps(found or {"message": "No such image"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        if found and len(body) % 2:  # both framings, as the engine sends them
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:7], body[7:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        del format, args


class World:
    """A user's specs, the record of their resolution, and an engine that has their images."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.specs = root / "specs"
        (self.specs / "data").mkdir(parents=True)
        (self.specs / "my-parent.yaml").write_text(PARENT)
        (self.specs / "my-child.yaml").write_text(CHILD)
        (self.specs / "data" / "hello.txt").write_text("hello\n")
        self.state = root / "state"
        self.sock = str(root / "engine.sock")
        self.server = _Engine(self.sock, _Handler)
        self.server.images = {}
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        self.environ = {
            "HEPML_IMAGES_STATE": str(self.state),
            "DOCKER_HOST": f"unix://{self.sock}",
            "PATH": os.environ.get("PATH", ""),
        }
        for name in ("HEPML_CA_BUNDLE", "HEPML_PULL_FROM", "HEPML_PUSH_CACHE", "HEPML_NOOP"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HEPML_IMAGES_STATE", str(self.state))
        monkeypatch.chdir(root)
        self.argv = ["build", "specs/my-child.yaml", "-V", "flavor=a"]

    def remember(self, *args: str) -> list[ResolvedVariant]:
        """What the full path does first: resolve (with a trace) and record."""
        specs = tuple(a for a in args if not a.startswith("-V"))
        variant = tuple(a.removeprefix("-V") for a in args if a.startswith("-V"))
        trace = spec_load.Trace()
        resolution = pipeline.resolve_specs(list(specs), list(variant), trace=trace)
        request = pipeline.BuildRequest(
            specs=specs, variant=variant, settings=pipeline.BuildSettings(log_dir=self.root)
        )
        pipeline.remember(request, resolution, trace)
        return closure(resolution.selected)

    def build(self, variants: list[ResolvedVariant], *, passed: bool = True) -> None:
        """Images for every variant, with a smoke-test result each."""
        (self.state / "results").mkdir(parents=True, exist_ok=True)
        for index, variant in enumerate(variants):
            image_id = f"sha256:{index:064x}"
            self.server.images[variant.content_ref] = {
                "Id": image_id,
                "RepoTags": [variant.content_ref, variant.image],
                "Config": {"Labels": {"io.hepml.digest": variant.digest, "other": "x" * index}},
            }
            result = {"image_id": image_id, "passed": passed, "finished": f"2026-01-0{index + 1}"}
            (self.state / "results" / f"{index:064x}.json").write_text(json.dumps(result))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    found = World(tmp_path, monkeypatch)
    variants = found.remember("specs/my-child.yaml", "-Vflavor=a")
    found.build(variants)
    yield found
    found.close()


def _relabel(world: World, key: str, value: str) -> None:
    image = next(iter(world.server.images.values()))
    image["Config"]["Labels"][key] = value


def _retag(world: World) -> None:
    image = next(iter(world.server.images.values()))
    image["RepoTags"] = image["RepoTags"][:1]


def _fail_results(world: World) -> None:
    for path in (world.state / "results").iterdir():
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "passed": False}))


def _record(world: World) -> Path:
    return next((world.state / "noop").iterdir())


def _corrupt_record(world: World, content: bytes) -> None:
    _record(world).write_bytes(content)


def _link_record(world: World) -> None:
    record = _record(world)
    moved = world.root / "moved.json"
    record.rename(moved)
    record.symlink_to(moved)


def explain(world: World, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The fast path's own account (``HEPML_NOOP=explain``) of one run; '' when taken."""
    code = noop.answer(argv, {**world.environ, "HEPML_NOOP": "explain"})
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    if code is None:
        return first.removeprefix("no-op path: not taken: ")
    assert code == 0
    assert first.startswith("no-op path: taken")
    return ""


def test_fast_path_imports_nothing_heavy(world: World) -> None:
    """A fresh interpreter answers the no-op with the standard library alone."""
    script = (
        "import json, sys\n"
        "from hepml_images import noop\n"
        f"code = noop.answer({world.argv!r})\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "ours = sorted(m for m in sys.modules if m.startswith('hepml_images'))\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'ours': ours}), file=sys.stderr)\n"
    )
    env = {**world.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=world.root,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stderr.splitlines()[-1])
    assert found["code"] == 0, done.stderr
    assert found["heavy"] == []
    assert found["ours"] == ["hepml_images", "hepml_images.noop", "hepml_images.state"]
    assert "my-child:a: up to date, passed its smoke tests at 2026-01-03" in done.stderr


def test_taken_when_nothing_changed(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(world, world.argv, capsys) == ""
    assert explain(world, [*world.argv, "-j", "3", "--gpu", "skip", "--no-test"], capsys) == ""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda w: (w.specs / "my-child.yaml").write_text(CHILD + "# edited\n"), "changed"),
        (lambda w: (w.specs / "my-parent.yaml").write_text(PARENT + "# edited\n"), "changed"),
        (lambda w: (w.specs / "data" / "hello.txt").write_text("bye\n"), "changed"),
        (lambda w: (w.specs / "my-parent.yaml").unlink(), "cannot be read"),
        # a spec beside the child now shadows the shipped parent of my-parent
        (lambda w: (w.specs / "debian-base.yaml").write_text(PARENT), "appeared"),
        (lambda w: w.server.images.pop(next(iter(w.server.images))), "is not there"),
        (lambda w: _relabel(w, "io.hepml.digest", "sha256:other"), "another content digest"),
        (_retag, "lacks the tag"),
        (_fail_results, "no passing smoke-test result"),
        (lambda w: _corrupt_record(w, b"{not json"), "unreadable"),
        (lambda w: _corrupt_record(w, b'{"format": 99}'), "another format"),
        (_link_record, "unreadable"),
    ],
)
def test_every_change_falls_through(
    world: World, capsys: pytest.CaptureFixture[str], change: Any, why: str
) -> None:
    change(world)
    assert why in explain(world, world.argv, capsys)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["build", "specs/my-child.yaml", "-V", "flavor=b"], "no record"),
        (["build", "specs/my-child.yaml"], "no record"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--no-cache"], "full path"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--push"], "full path"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--sif"], "full path"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--junit", "x.xml"], "full path"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "-j", "0"], "-j"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--gpu", "maybe"], "--gpu"),
        (["build", "specs/my-child.yaml", "-V", "flavor=a", "--help"], "full path"),
        (["test", "specs/my-child.yaml"], "not a build"),
    ],
)
def test_other_requests_fall_through(
    world: World, capsys: pytest.CaptureFixture[str], argv: list[str], why: str
) -> None:
    assert why in explain(world, argv, capsys)


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("DOCKER_HOST", "tcp://127.0.0.1:2375", "no local socket"),
        ("DOCKER_HOST", "ssh://host", "no local socket"),
        ("DOCKER_TLS_VERIFY", "1", "is set"),
        ("HEPML_PULL_FROM", "registry.example/ns", "is set"),
        ("HEPML_PUSH_CACHE", "registry.example/ns", "is set"),
        ("SOURCE_DATE_EPOCH", "yesterday", "not a number"),
        ("HEPML_CA_BUNDLE", "/no/such/bundle.pem", "cannot be read"),
        ("HEPML_BUILDER", "kaniko", "is not one of"),
    ],
)
def test_environment_falls_through(
    world: World, capsys: pytest.CaptureFixture[str], name: str, value: str, why: str
) -> None:
    world.environ[name] = value
    assert why in explain(world, world.argv, capsys)


def test_the_builder_changes_nothing_of_a_no_op(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every backend ``build --builder`` takes is known here; an unknown one takes the CLI."""
    assert noop._BUILDERS == buildkit.BACKENDS
    for value in buildkit.BACKENDS:
        assert explain(world, [*world.argv, "--builder", value], capsys) == ""  # taken
    assert "--builder 'kaniko'" in explain(world, [*world.argv, "--builder=kaniko"], capsys)


def test_another_directory_is_another_request(
    world: World,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "specs").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert "no record" in explain(world, world.argv, capsys)


def test_changed_tool_falls_through(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(noop, "__version__", "99.0")
    assert "the tool changed" in explain(world, world.argv, capsys)


def test_off_switch(world: World) -> None:
    assert noop.answer(world.argv, {**world.environ, "HEPML_NOOP": "0"}) is None


def test_the_record_replaces_a_link_and_never_writes_through_it(world: World) -> None:
    record = next((world.state / "noop").iterdir())
    victim = world.root / "victim"
    victim.write_text("keep")
    record.unlink()
    record.symlink_to(victim)
    world.remember("specs/my-child.yaml", "-Vflavor=a")
    assert victim.read_text() == "keep"
    assert not record.is_symlink()
    assert json.loads(record.read_text())["format"] == noop.FORMAT


def test_output_is_the_full_paths(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The tables, notes and JSON are what ``display`` prints for the same outcomes."""
    from rich.console import Console

    from hepml_images import display

    code = noop.answer([*world.argv, "--json"], world.environ)
    fast = capsys.readouterr()
    assert code == 0
    variants = world.remember("specs/my-child.yaml", "-Vflavor=a")
    outcomes = [
        Outcome(
            variant=v,
            state=State.UP_TO_DATE,
            image_id=world.server.images[v.content_ref]["Id"],
        )
        for v in variants
    ]
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=160, highlight=False, emoji=False, markup=False, soft_wrap=True
    )
    show = display.Display(console, threading.Event())
    with show.building(outcomes):
        for outcome in outcomes:
            show.outcome(outcome)
    show.built(outcomes)
    for index, outcome in enumerate(outcomes):
        show.note(
            f"{outcome.variant.key}: up to date, passed its smoke tests at 2026-01-0{index + 1}"
            " (same image ID)"
        )
    show.tested([])
    stamp = re.compile(r"^\d\d:\d\d:\d\d ", re.MULTILINE)
    assert stamp.sub("", fast.err) == stamp.sub("", buffer.getvalue())
    built = pipeline.Built(outcomes=tuple(outcomes), t0=0.0, interrupted=False)
    assert json.loads(fast.out) == display.build_json(pipeline.BuildRun(built=built), test=True)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [["a", "b", "c", "d", "e"]],
        [["hepml/x:0123456789abcdef", "up to date", "0123456789ab", "", ""]] * 3,
        [["a" * 60, "b", "", "d" * 40, "e"]],
    ],
)
def test_plain_table_is_richs(rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="build summary")
    for column in ("image", "state", "image ID", "time", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=160, highlight=False, markup=False, soft_wrap=True).print(table)
    headers = ("image", "state", "image ID", "time", "note")
    assert noop.plain_table("build summary", headers, rows) == buffer.getvalue()


def test_plain_table_leaves_wide_or_unusual_cells_to_rich() -> None:
    headers = ("image", "note")
    assert noop.plain_table("t", headers, [["x" * 200, ""]]) is None
    assert noop.plain_table("t", headers, [["\u00e9t\u00e9", ""]]) is None
