"""The no-op path of ``hepml-images build``: "everything is up to date", answered fast.

A build where nothing changed used to spend most of its time importing (the Docker SDK, jsonschema,
Jinja, typer, rich) and resolving specs, to find out that every image is already there. This
module answers that case with the standard library alone, or steps aside:

- ``remember`` (the pipeline calls it after resolving a ``build`` of the command line) writes, under
  the state directory, what the resolution read (every spec file, ``extends`` parent and attached
  file, by content; the paths whose appearance would change the answer), the tool's code, and what
  it gave: the images in build order with their content digests.
- ``answer`` (the console entry point calls it before anything else is imported) takes the fast
  path only for a ``build`` whose options it knows and which cannot change a no-op's answer; with
  a record of exactly this request whose inputs are all unchanged; when every image's content tag
  exists on a local engine socket (``GET /images/{ref}/json``), carries the content digest label
  and its variant tag; and, unless ``--no-test``, when every image has a passing smoke-test result
  for its exact ID. Then it prints what the full path prints for that case and exits 0. Anything
  else, any doubt, any error: ``None``, and the full path runs (and decides, and reports, itself).

``HEPML_NOOP=0`` turns the fast path off; ``HEPML_NOOP=explain`` adds one line to stderr that says
whether it was taken and, if not, why. Not pure: it reads files, the engine socket and the clock,
prints and writes its record (atomically, never through a symbolic link).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepml_images import __version__
from hepml_images.state import results_dir, state_dir

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Bumped when the record's form changes (an older record is then ignored).
FORMAT = 1
#: ``HEPML_NOOP``: ``0`` off, ``explain`` say what happened.
ENV = "HEPML_NOOP"
DIGEST_LABEL = "io.hepml.digest"
DEFAULT_SOCKET = "/var/run/docker.sock"
#: Seconds to wait for the engine before the full path takes over.
SOCKET_TIMEOUT_S = 5.0
#: The CLI's console width outside a terminal (``cli._LOG_WIDTH``).
LOG_WIDTH = 160
#: Largest record read (a record of hundreds of images is a few hundred KiB).
MAX_RECORD_BYTES = 4 * 1024 * 1024
#: Largest engine answer read (an image's inspect document is a few KiB).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Environment variables under which a no-op would not be a plain no-op (the full path handles
#: them): pulling and cache pushing take registries, TLS takes the SDK.
_FULL_PATH_ENV = ("HEPML_PULL_FROM", "HEPML_PUSH_CACHE", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
_CA_ENV = "HEPML_CA_BUNDLE"
#: ``build --builder`` (``engine.buildkit.BACKENDS``; which backend does not change a no-op)
_BUILDERS = ("auto", "buildkit", "classic")
_BUILDER_ENV = "HEPML_BUILDER"
_GPU_MODES = ("auto", "require", "skip")
_REF_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/:")


class _Miss(Exception):  # noqa: N818 - not an error: the reason the full path runs
    """The fast path does not apply; the message says why (``HEPML_NOOP=explain``)."""


# --- the record ---------------------------------------------------------------------------


def _request_key(specs: Sequence[str], variant: Sequence[str], cwd: str) -> dict[str, Any]:
    return {"specs": list(specs), "variant": list(variant), "cwd": cwd}


def _record_path(key: Mapping[str, Any]) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return state_dir() / "noop" / f"build-{name}.json"


def tool_fingerprint() -> dict[str, Any]:
    """The tool's version and its code as installed: every module's name, size and mtime.

    A changed module (an edited checkout, an upgrade) can change what a spec resolves to.
    """
    package = str(Path(__file__).resolve().parent)
    entries: list[list[object]] = []
    pending = [package]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as found:
            for entry in found:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    info = entry.stat()
                    rel = os.path.relpath(entry.path, package)
                    entries.append([rel, info.st_size, info.st_mtime_ns])
    entries.sort()
    code = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"version": __version__, "code": code}


def remember(  # noqa: PLR0913 - plain data in, so that this module imports nothing heavy
    specs: Sequence[str],
    variant: Sequence[str],
    *,
    files: Mapping[str, tuple[str, str]],
    dirs: Mapping[str, str],
    absent: Mapping[str, str],
    images: Sequence[Mapping[str, Any]],
) -> None:
    """Record one resolution of ``build SPECS -V VARIANT`` (see the module docstring).

    ``images``: in build order, each with ``key``, ``spec``, ``slug``, ``ref`` (content tag),
    ``tag`` (variant tag) and ``digest``. Best effort: a record that cannot be
    written only costs the next no-op its speed.
    """
    from hepml_images import outputs  # noqa: PLC0415 - only the full path writes records
    from hepml_images.errors import HepmlError  # noqa: PLC0415

    key = _request_key(specs, variant, str(Path.cwd()))
    record = {
        "format": FORMAT,
        "request": key,
        "tool": tool_fingerprint(),
        "files": {k: list(v) for k, v in sorted(files.items())},
        "dirs": dict(sorted(dirs.items())),
        "absent": dict(sorted(absent.items())),
        "images": [dict(i) for i in images],
    }
    path = _record_path(key)
    content = json.dumps(record, indent=1, sort_keys=True).encode()
    try:
        outputs.write_files(
            path.parent, [outputs.OutputFile(name=path.name, content=content, mode=0o600)]
        )
    except (HepmlError, OSError):
        return


def _read_limited(path: str, limit: int, *, follow: bool = True) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(fd)
    raise _Miss(f"{path} is larger than {limit} bytes")


def _load_record(key: Mapping[str, Any]) -> dict[str, Any]:
    path = _record_path(key)
    try:
        record = json.loads(_read_limited(str(path), MAX_RECORD_BYTES, follow=False))
    except FileNotFoundError:
        raise _Miss("no record of this request yet") from None
    except (OSError, ValueError) as exc:
        raise _Miss(f"the record {path} is unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _Miss(f"the record {path} has another format")
    if record.get("request") != key:
        raise _Miss("the record is of another request")
    if record.get("tool") != tool_fingerprint():
        raise _Miss("the tool changed since the record was written")
    return record


def _check_inputs(record: Mapping[str, Any]) -> None:
    """Every input of the recorded resolution is unchanged, or ``_Miss`` says which is not."""
    for path, (real, digest) in record["files"].items():
        try:
            data = _read_limited(path, 1 << 30)
        except OSError:
            raise _Miss(f"{path} cannot be read any more") from None
        if os.path.realpath(path) != real:
            raise _Miss(f"{path} now resolves to another file")
        if hashlib.sha256(data).hexdigest() != digest:
            raise _Miss(f"{path} changed")
    for path, real in record["dirs"].items():
        if os.path.realpath(path) != real:
            raise _Miss(f"{path} now resolves to another directory")
    for path, what in record["absent"].items():
        there = Path(path).is_file() if what == "file" else Path(path).exists()
        if there:
            raise _Miss(f"{path} appeared")


# --- the engine, over its socket ----------------------------------------------------------


def socket_path(environ: Mapping[str, str]) -> str:
    """The engine's Unix socket (``DOCKER_HOST``); ``_Miss`` for anything else."""
    host = environ.get("DOCKER_HOST")
    if host is None:
        return DEFAULT_SOCKET
    if host.startswith("unix://") and len(host) > len("unix://"):
        return host.removeprefix("unix://")
    raise _Miss(f"DOCKER_HOST={host!r} is no local socket")


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            raise _Miss("a broken chunked answer from the engine")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        body = rest[size + 2 :]


def http_get(sock: str, path: str) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP/1.1 GET on the Unix socket ``sock``."""
    request = f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        conn.connect(sock)
        conn.sendall(request.encode("ascii"))
        chunks = []
        total = 0
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_ANSWER_BYTES:
                raise _Miss("an oversized answer from the engine")
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1."):  # noqa: PLR2004
        raise _Miss("an answer from the engine that is no HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise _Miss("a truncated answer from the engine")
        body = body[:length]
    return int(parts[1]), body


def inspect_image(sock: str, ref: str) -> dict[str, Any] | None:
    """The engine's inspect document of ``ref``; None when there is no such image."""
    if not ref or not set(ref) <= _REF_CHARS or ".." in ref:
        raise _Miss(f"{ref!r} is not a plain reference")
    try:
        status, body = http_get(sock, f"/images/{ref}/json")
    except OSError as exc:
        raise _Miss(f"the engine at {sock} does not answer ({exc})") from None
    if status == 404:  # noqa: PLR2004
        return None
    if status != 200:  # noqa: PLR2004
        raise _Miss(f"the engine answered {status} for {ref}")
    found = json.loads(body)
    if not isinstance(found, dict) or not isinstance(found.get("Id"), str):
        raise _Miss(f"the engine's answer for {ref} has no Id")
    return found


# --- the command line ---------------------------------------------------------------------


class Request:
    """A ``build`` the fast path may answer: what of its options matters to a no-op."""

    def __init__(self) -> None:
        self.specs: list[str] = []
        self.variant: list[str] = []
        self.test = True
        self.json = False
        self.ca_bundle: str | None = None


def parse(argv: Sequence[str]) -> Request:
    """The ``build`` options the fast path knows; ``_Miss`` for anything else.

    Options that change nothing when every image is up to date are accepted and checked like
    the command line checks them (``-j``, ``--gpu``, ``--log-dir``); the rest (``--no-cache``,
    ``--push``, ``--sif``, ``--junit``, ``--help`` …) take the full path.
    """
    if not argv or argv[0] != "build":
        raise _Miss("not a build")
    request = Request()
    args = list(argv[1:])
    valued = {"--variant", "-V", "--jobs", "-j", "--gpu", "--ca-bundle", "--log-dir", "--builder"}
    while args:
        arg = args.pop(0)
        name, value = arg, None
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif arg[:2] in {"-V", "-j"} and len(arg) > 2:  # noqa: PLR2004
            name, value = arg[:2], arg[2:]
        if name in valued and value is None:
            if not args:
                raise _Miss(f"{name} without a value")
            value = args.pop(0)
        if name in {"--variant", "-V"} and value is not None:
            request.variant.append(value)
        elif name in {"--jobs", "-j"} and value is not None:
            if not value.strip().lstrip("+").isdigit() or int(value) < 1:
                raise _Miss(f"{name} {value!r}")
        elif name == "--gpu" and value is not None:
            if value not in _GPU_MODES:
                raise _Miss(f"--gpu {value!r}")
        elif name == "--ca-bundle" and value is not None:
            request.ca_bundle = value
        elif name == "--builder" and value is not None:
            if value not in _BUILDERS:
                raise _Miss(f"--builder {value!r}")
        elif name == "--log-dir":
            pass  # a no-op writes no log
        elif name == "--no-test" and value is None:
            request.test = False
        elif name == "--json" and value is None:
            request.json = True
        elif arg.startswith("-"):
            raise _Miss(f"{arg} takes the full path")
        else:
            request.specs.append(arg)
    return request


def _check_environment(request: Request, environ: Mapping[str, str]) -> None:
    for name in _FULL_PATH_ENV:
        if environ.get(name):
            raise _Miss(f"{name} is set")
    if environ.get(_BUILDER_ENV, "auto") not in _BUILDERS:
        raise _Miss(f"{_BUILDER_ENV} is not one of {', '.join(_BUILDERS)}")
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise _Miss("SOURCE_DATE_EPOCH is not a number")
    bundle = request.ca_bundle if request.ca_bundle is not None else environ.get(_CA_ENV) or None
    if bundle == "":
        raise _Miss("an empty --ca-bundle")
    if bundle is not None:
        # what ``build.ca.read_bundle`` accepts (the bundle is only served to builds)
        try:
            data = _read_limited(bundle, 1 << 30)
        except OSError:
            raise _Miss(f"the CA bundle {bundle} cannot be read") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise _Miss(f"the CA bundle {bundle} holds no certificate")


# --- the decision ---------------------------------------------------------------------------


def decide(request: Request, environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every image of the recorded resolution, up to date, with its ID (and result)."""
    key = _request_key(request.specs, request.variant, str(Path.cwd()))
    record = _load_record(key)
    _check_inputs(record)
    sock = socket_path(environ)
    images = []
    for image in record["images"]:
        found = inspect_image(sock, image["ref"])
        if found is None:
            raise _Miss(f"{image['ref']} is not there")
        labels = (found.get("Config") or {}).get("Labels") or {}
        if labels.get(DIGEST_LABEL) != image["digest"]:
            raise _Miss(f"{image['ref']} carries another content digest")
        tags = found.get("RepoTags") or []
        if image["ref"] not in tags or image["tag"] not in tags:
            raise _Miss(f"{image['ref']} lacks the tag {image['tag']}")
        image_id = found["Id"]
        finished = None
        if request.test:
            result = _passed_result(image_id)
            if result is None:
                raise _Miss(f"{image['key']} has no passing smoke-test result")
            finished = result.get("finished", "?")
        images.append({**image, "id": image_id, "finished": finished})
    if not images:
        raise _Miss("the record holds no image")
    return images


def _passed_result(image_id: str) -> dict[str, Any] | None:
    path = results_dir() / f"{image_id.removeprefix('sha256:')}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("image_id") != image_id or not data.get("passed"):
        return None
    return data


# --- the output -------------------------------------------------------------------------------

_SUMMARY_HEADERS = ("image", "state", "image ID", "time", "note")
_TESTS_HEADERS = ("image", "check", "result", "time", "detail")
_UP_TO_DATE = "up to date"


def _is_terminal(stream: Any, environ: Mapping[str, str]) -> bool:  # noqa: ANN401 - a stream
    """What rich decides for a console on ``stream`` (``Console.is_terminal``)."""
    compatible = environ.get("TTY_COMPATIBLE", "")
    if compatible in {"0", "1"}:
        return compatible == "1"
    force = environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def plain_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str | None:
    """The text rich prints for a default ``Table`` outside a terminal (None: not that simple).

    Only for cells of printable ASCII in a table that fits ``LOG_WIDTH``: no wrapping, no
    double-width characters (``tests/unit/test_noop.py`` compares it with rich's own).
    """
    cells = [*headers, *(c for row in rows for c in row), title]
    if not all(c.isascii() and c.isprintable() for c in cells):
        return None
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    if sum(widths) + 3 * len(widths) + 1 > LOG_WIDTH or len(title) > LOG_WIDTH:
        return None

    def rule(left: str, middle: str, right: str, fill: str) -> str:
        return left + middle.join(fill * (w + 2) for w in widths) + right

    def row(edge: str, values: Sequence[str]) -> str:
        return (
            edge + edge.join(f" {v.ljust(w)} " for v, w in zip(values, widths, strict=True)) + edge
        )

    lines = [title, rule("┏", "┳", "┓", "━"), row("┃", headers), rule("┡", "╇", "┩", "━")]
    lines += [row("│", r) for r in rows]
    lines.append(rule("└", "┴", "┘", "─"))
    return "\n".join(lines) + "\n"


def _report(images: Sequence[Mapping[str, Any]], *, test: bool) -> dict[str, Any]:
    """What ``build --json`` prints (``display.build_json``) for images all up to date."""
    builds = [
        {
            "spec": i["spec"],
            "variant": i["slug"],
            "image": i["ref"],
            "tags": [i["tag"]],
            "digest": i["digest"],
            "state": _UP_TO_DATE,
            "image_id": i["id"],
            "seconds": None,
            "reason": None,
            "hint": None,
            "pulled_from": None,
            "started": None,
            "finished": None,
            "log": None,
        }
        for i in images
    ]
    report: dict[str, Any] = {"builds": builds}
    if test:
        report["tests"] = []
    return report


def _notes(images: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"{i['key']}: up to date, passed its smoke tests at {i['finished']} (same image ID)"
        for i in images
    ]


def _summary_rows(images: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[i["ref"], _UP_TO_DATE, i["id"][7:19], "", ""] for i in images]


def render_plain(images: Sequence[Mapping[str, Any]], *, test: bool) -> str | None:
    """Stderr outside a terminal, as the full path prints it (None: leave it to rich)."""
    stamp = time.strftime("%H:%M:%S")
    text = "".join(f"{stamp} {i['key']}: {_UP_TO_DATE}\n" for i in images)
    summary = plain_table("build summary", _SUMMARY_HEADERS, _summary_rows(images))
    if summary is None:
        return None
    text += summary
    if test:
        tests = plain_table("smoke tests", _TESTS_HEADERS, [])
        if tests is None:
            return None
        text += "".join(f"{n}\n" for n in _notes(images)) + tests
    return text


def _print_rich(images: Sequence[Mapping[str, Any]], *, test: bool) -> None:
    """Stderr on a terminal (or anything the plain form does not cover), through rich.

    The same tables as ``display`` builds: on a terminal the build table is printed once, as the
    live table's last frame stays on the screen.
    """
    from rich.console import Console  # noqa: PLC0415 - only for terminals
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = Console(
        stderr=True,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
        width=None if sys.stderr.isatty() else LOG_WIDTH,
    )
    if console.is_terminal:
        live = Table(box=None, show_header=False, pad_edge=False)
        live.add_column("image", no_wrap=True)
        live.add_column("state", no_wrap=True)
        live.add_column("time", justify="right", no_wrap=True)
        live.add_column("step", overflow="ellipsis", no_wrap=True)
        for image in images:
            live.add_row(Text(image["key"]), Text(_UP_TO_DATE, style="green"), "", Text(""))
        console.print(live)
    else:
        stamp = time.strftime("%H:%M:%S")
        for image in images:
            console.print(f"{stamp} {image['key']}: {_UP_TO_DATE}", markup=False)
    summary = Table(title="build summary")
    for column in _SUMMARY_HEADERS:
        summary.add_column(column, overflow="fold")
    for ref, state, short, seconds, note in _summary_rows(images):
        summary.add_row(Text(ref), Text(state, style="green"), short, seconds, Text(note))
    console.print(summary)
    if test:
        for note in _notes(images):
            console.print(note, markup=False)
        tests = Table(title="smoke tests")
        for column in _TESTS_HEADERS:
            tests.add_column(column, overflow="fold")
        console.print(tests)


def _print_json(report: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    if _is_terminal(sys.stdout, environ):
        from rich.console import Console  # noqa: PLC0415 - colours for a terminal

        Console(highlight=False, emoji=False, markup=False, soft_wrap=True).print_json(
            json.dumps(report)
        )
        return
    sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def answer(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int | None:
    """The exit code of ``hepml-images ARGV`` when the fast path answered it, else None."""
    mode = environ.get(ENV, "")
    if mode == "0":
        return None
    try:
        request = parse(argv)
        _check_environment(request, environ)
        images = decide(request, environ)
        plain = None
        if not _is_terminal(sys.stderr, environ) and (sys.stderr.encoding or "").lower() in {
            "utf-8",
            "utf8",
        }:
            plain = render_plain(images, test=request.test)
    except _Miss as miss:
        if mode == "explain":
            sys.stderr.write(f"no-op path: not taken: {miss}\n")
        return None
    except Exception as exc:  # noqa: BLE001 - any surprise: the full path decides and reports
        if mode == "explain":
            sys.stderr.write(f"no-op path: not taken: {type(exc).__name__}: {exc}\n")
        return None
    # from here on the answer is given: nothing falls back (that would print it twice)
    if mode == "explain":
        sys.stderr.write(f"no-op path: taken: {len(images)} images up to date\n")
    if plain is not None:
        sys.stderr.write(plain)
        sys.stderr.flush()
    else:
        _print_rich(images, test=request.test)
    if request.json:
        _print_json(_report(images, test=request.test), environ)
    return 0


def entry() -> None:
    """Console-script entry point: the fast path, else the command line (``cli.entry``)."""
    code = answer(sys.argv[1:])
    if code is None:
        from hepml_images.cli import entry as cli_entry  # noqa: PLC0415 - the full path

        cli_entry()
        return
    sys.stdout.flush()
    sys.exit(code)
