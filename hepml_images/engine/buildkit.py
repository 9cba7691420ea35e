"""Builds through BuildKit: ``docker buildx build`` as a subprocess (no SDK here).

docker-py cannot drive BuildKit; the docker CLI's buildx plugin is the supported client. The
build always goes to the buildx builder of the engine's own ``docker`` driver (named like the
docker context), so that ``FROM`` sees the engine's local images and the result lands in the
engine's image store, whatever builder the user selected for other work.

What is read from it: progress as ``--progress=rawjson`` (one JSON status document per line on
stderr: vertices with their names, start/completion, cache hits and errors, and the base64 log
output of each step), and the result from ``--metadata-file``. Attestations (provenance, SBOM)
are off: they would make the engine store an index instead of one image manifest, and they
carry wall-clock times.

``choose`` decides which backend ``build`` uses: BuildKit wherever buildx ≥ 0.13 and a Docker
Engine ≥ 23 are there (``auto``), else the classic builder, with the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hepml_images.errors import BuildError, Cancelled, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hepml_images.engine import Activity, BuildRequest

#: buildx from here on has ``rewrite-timestamp`` and ``--progress=rawjson``.
MIN_BUILDX = (0, 13)
#: Docker Engine from here on builds with BuildKit by default.
MIN_ENGINE = 23
BACKENDS = ("auto", "buildkit", "classic")
#: The environment variable ``build --builder`` defaults to.
BUILDER_ENV = "HEPML_BUILDER"
_STEP = re.compile(r"^\[(?:[\w.-]+ )?(\d+)/(\d+)\] (.*)$", re.DOTALL)
_TAIL_LINES = 30
_SHOWN = 72
#: What every rendered RUN starts with and says nothing about the step: the fixed epoch of
#: its tools and the CA bundle's prologue (``render.writers``)
_BOILERPLATE = (
    re.compile(r"export SOURCE_DATE_EPOCH=\d+\s*(?:&&|;)\s*"),
    re.compile(r'if \[ -n "[^"]*" \]; then .*?; fi\s*(?:&&|;)\s*', re.DOTALL),
)
#: BuildKit's words for a failed RUN, which repeat the whole command
_PROCESS = re.compile(r'process ".*" did not complete successfully: (exit code: \d+)', re.DOTALL)
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, kw_only=True)
class Backend:
    """The build backend ``build`` uses, and why (plain data; see ``choose``)."""

    #: ``buildkit`` or ``classic``
    name: str
    #: the docker CLI that runs buildx (BuildKit only)
    cli: str | None = None
    #: buildx's version, as it printed it
    buildx: str | None = None
    #: the buildx builder (the docker driver's, named like the context)
    builder: str | None = None
    #: why this backend (shown by ``build`` and ``doctor``)
    reason: str = ""

    @property
    def label(self) -> str:
        """``BuildKit (docker buildx 0.29.1)`` or ``classic``, for messages."""
        if self.name == "buildkit":
            return f"BuildKit (docker buildx {self.buildx})"
        return "classic (the Engine API's builder)"


def buildx_version(cli: str, env: Mapping[str, str]) -> tuple[tuple[int, int], str] | str:
    """The version of buildx as ``((major, minor), text)``, or why there is no usable buildx."""
    try:
        ran = subprocess.run(  # noqa: S603 - fixed argv
            [cli, "buildx", "version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker buildx version` failed: {exc}"
    if ran.returncode != 0:
        why = (ran.stderr or ran.stdout).strip().splitlines()
        return f"no docker buildx plugin ({why[-1] if why else f'exit {ran.returncode}'})"
    match = _VERSION.search(ran.stdout.replace("github.com/docker/buildx", ""))
    if match is None:
        return f"cannot read buildx's version from {ran.stdout.strip()!r}"
    return (int(match[1]), int(match[2])), ".".join(g for g in match.groups() if g)


def context_name(env: Mapping[str, str]) -> str:
    """The docker context the CLI uses (its docker-driver builder has the same name).

    ``DOCKER_HOST`` makes it ``default``; else ``DOCKER_CONTEXT``; else the config file's
    ``currentContext``; else ``default``.
    """
    if env.get("DOCKER_HOST"):
        return "default"
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"]
    config = Path(env.get("DOCKER_CONFIG") or Path(env.get("HOME", "~")).expanduser() / ".docker")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        current = json.loads((config / "config.json").read_text(encoding="utf-8"))
        name = current.get("currentContext")
        if isinstance(name, str) and name:
            return name
    return "default"


def _engine_major(version: Mapping[str, Any]) -> int | None:
    match = _VERSION.search(str(version.get("Version", "")))
    return int(match[1]) if match else None


def choose(
    requested: str,
    version: Mapping[str, Any],
    flavour: str,
    *,
    env: Mapping[str, str] = os.environ,
    which: Callable[[str], str | None] = shutil.which,
) -> Backend:
    """The backend for ``--builder REQUESTED`` on this engine (``UsageError`` when impossible)."""
    if requested not in BACKENDS:
        raise UsageError(
            f"unknown builder {requested!r}", hint=f"use one of: {', '.join(BACKENDS)}"
        )
    if requested == "classic":
        return Backend(name="classic", reason="asked for (--builder classic)")
    why_not = None
    cli = which("docker")
    found: tuple[tuple[int, int], str] | str = "no docker CLI on PATH"
    major = _engine_major(version)
    if flavour != "Docker Engine":
        why_not = f"{flavour} does not run BuildKit builds through the docker CLI"
    elif major is not None and major < MIN_ENGINE:
        why_not = f"Docker Engine {version.get('Version')} is older than {MIN_ENGINE}"
    elif cli is None:
        why_not = "no docker CLI on PATH"
    else:
        found = buildx_version(cli, env)
        if isinstance(found, str):
            why_not = found
        elif found[0] < MIN_BUILDX:
            why_not = f"docker buildx {found[1]} is older than {'.'.join(map(str, MIN_BUILDX))}"
    if why_not is None and cli is not None and not isinstance(found, str):
        return Backend(
            name="buildkit",
            cli=cli,
            buildx=found[1],
            builder=context_name(env),
            reason="asked for" if requested == "buildkit" else "buildx and the engine support it",
        )
    if requested == "buildkit":
        raise UsageError(
            f"--builder buildkit: {why_not}",
            hint="install docker buildx ≥ 0.13 (Debian: apt-get install docker-buildx; `make"
            " setup` does) and Docker Engine ≥ 23, or use --builder classic",
        )
    return Backend(name="classic", reason=f"BuildKit unavailable: {why_not}")


def build_argv(request: BuildRequest, backend: Backend, metadata: Path) -> list[str]:
    """The ``docker buildx build`` command line; the context comes as a tar on stdin."""
    argv = [
        backend.cli or "docker",
        "buildx",
        "build",
        "--builder",
        backend.builder or "default",
        "--progress=rawjson",
        "--provenance=false",
        "--sbom=false",
        "--load",
        "--metadata-file",
        str(metadata),
        "--tag",
        request.tag,
    ]
    if request.no_cache:
        argv.append("--no-cache")
    for key, value in sorted(request.build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in sorted(request.labels.items()):
        argv += ["--label", f"{key}={value}"]
    argv.append("-")
    return argv


def step_summary(text: str) -> str:
    """A step's instruction on one line, without the rendered boilerplate."""
    for pattern in _BOILERPLATE:
        text = pattern.sub("", text, count=1)
    return " ".join(text.split())


@dataclass
class _Vertex:
    name: str
    logs: deque[str]
    started: bool = False
    done: bool = False
    error: str | None = None


class Progress:
    """Reads rawjson status documents: writes the log, reports steps, remembers errors."""

    def __init__(self, log: IO[str], progress: Callable[[str], None]) -> None:
        self.log = log
        self.progress = progress
        self.vertices: dict[str, _Vertex] = {}
        #: lines that were not JSON (buildx's own ``ERROR: …`` at the end)
        self.other: deque[str] = deque(maxlen=_TAIL_LINES)
        self._partial: dict[str, str] = {}

    def feed(self, line: str) -> None:
        """One line of buildx's stderr."""
        try:
            document = json.loads(line)
        except ValueError:
            text = line.rstrip()
            if text:
                self.other.append(text)
                self.log.write(text + "\n")
            return
        if not isinstance(document, dict):
            return
        for vertex in document.get("vertexes") or []:
            if isinstance(vertex, dict):
                self._vertex(vertex)
        for entry in document.get("logs") or []:
            if isinstance(entry, dict):
                self._logs(entry)

    def _vertex(self, data: Mapping[str, Any]) -> None:
        digest = str(data.get("digest", ""))
        name = str(data.get("name", ""))
        vertex = self.vertices.setdefault(digest, _Vertex(name=name, logs=deque(maxlen=50)))
        if data.get("started") and not vertex.started:
            vertex.started = True
            step = _STEP.match(name)
            if step is not None:
                what = step_summary(step[3])
                self.progress(f"step {step[1]}/{step[2]}: {what[:70]}")
                self.log.write(f"#{step[1]}/{step[2]} {what}\n")
        if data.get("cached") and not vertex.done:
            self.log.write(f"CACHED {name}\n")
        if data.get("error"):
            vertex.error = str(data["error"])
            self.log.write(f"ERROR: {name}: {vertex.error}\n")
        if data.get("completed"):
            vertex.done = True

    def _logs(self, entry: Mapping[str, Any]) -> None:
        digest = str(entry.get("vertex", ""))
        try:
            text = base64.b64decode(str(entry.get("data", ""))).decode(errors="replace")
        except (binascii.Error, ValueError):
            return
        self.log.write(text)
        vertex = self.vertices.get(digest)
        if vertex is None:
            return
        pending = self._partial.get(digest, "") + text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, rest = pending.split("\n")
        self._partial[digest] = rest
        vertex.logs.extend(line for line in lines if line.strip())

    def failure(self, code: int) -> str:
        """What failed: the failed step, its error and its last lines of output."""
        for vertex in self.vertices.values():
            if vertex.error is None:
                continue
            step = _STEP.match(vertex.name)
            what = step_summary(step[3] if step else vertex.name)
            what = what if len(what) <= _SHOWN else what[: _SHOWN - 1] + "…"
            where = f"step {step[1]}/{step[2]} " if step else ""
            error = _PROCESS.sub(r"\1", vertex.error)
            tail = "\n".join(f"  {line}" for line in list(vertex.logs)[-8:])
            return f"{where}`{what}` failed: {error}" + (f"\nlast output:\n{tail}" if tail else "")
        errors = [line for line in self.other if line.startswith("ERROR")]
        return (errors or list(self.other) or [f"docker buildx build exited with status {code}"])[
            -1
        ]


def _feed_stdin(process: subprocess.Popen[bytes], data: bytes) -> None:
    assert process.stdin is not None  # noqa: S101 - opened with stdin=PIPE
    with contextlib.suppress(BrokenPipeError, OSError):
        process.stdin.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        process.stdin.close()


def _follow(
    process: subprocess.Popen[bytes], context: bytes, reader: Progress, activity: Activity
) -> int:
    """Feed the context, read the progress until buildx ends; its exit status."""
    with activity.lock:
        activity.process = process
    feeder = threading.Thread(target=_feed_stdin, args=(process, context), daemon=True)
    feeder.start()
    assert process.stderr is not None  # noqa: S101 - opened with stderr=PIPE
    try:
        for raw in process.stderr:
            reader.feed(raw.decode(errors="replace"))
        return process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    finally:
        feeder.join(timeout=10)
        with activity.lock:
            activity.process = None


def run_build(  # noqa: PLR0913 - keyword-only build settings
    request: BuildRequest,
    backend: Backend,
    *,
    log: IO[str],
    progress: Callable[[str], None],
    activity: Activity,
    env: Mapping[str, str] = os.environ,
) -> Mapping[str, Any]:
    """Run ``docker buildx build``; its metadata (``containerimage.config.digest`` …)."""
    activity.check()
    with tempfile.TemporaryDirectory(prefix="hepml-buildx-") as tmp:
        metadata = Path(tmp) / "metadata.json"
        argv = build_argv(request, backend, metadata)
        log.write("$ " + " ".join(argv[:-1]) + " - < context.tar\n")
        reader = Progress(log, progress)
        with subprocess.Popen(  # noqa: S603 - argv built from validated values, no shell
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**env, "BUILDX_NO_DEFAULT_ATTESTATIONS": "1"},
            start_new_session=True,
        ) as process:
            code = _follow(process, request.context, reader, activity)
        if activity.cancel.is_set():
            raise Cancelled("cancelled")
        if code != 0:
            raise BuildError(reader.failure(code))
        try:
            found = json.loads(metadata.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BuildError(f"docker buildx build wrote no readable metadata: {exc}") from None
    if not isinstance(found, dict) or not found.get("containerimage.config.digest"):
        raise BuildError("docker buildx build reported no image (no config digest)")
    return found
