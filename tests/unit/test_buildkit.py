"""The BuildKit backend around ``docker buildx build``: choice, command line, progress, result.

The docker CLI is replaced here by small scripts that answer like it (a unit test of the code
around it); the real buildx builds in the integration tests.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import tarfile
import threading
from typing import TYPE_CHECKING

import pytest

from hepml_images.engine import Activity, BuildRequest
from hepml_images.engine.buildkit import (
    Backend,
    Progress,
    build_argv,
    choose,
    context_name,
    run_build,
    step_summary,
)
from hepml_images.errors import BuildError, Cancelled, UsageError
from tests.unit.fakes import FakeEngine

if TYPE_CHECKING:
    from pathlib import Path

DOCKER_28 = {"Version": "28.5.2+dfsg4", "ApiVersion": "1.51"}


def fake_docker(tmp_path: Path, script: str) -> str:
    """An executable ``docker`` that runs ``script`` (POSIX sh)."""
    path = tmp_path / "docker"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def buildx_printing(tmp_path: Path, version: str) -> str:
    return fake_docker(
        tmp_path,
        f'[ "$1 $2" = "buildx version" ] && echo "github.com/docker/buildx {version} abc"\n',
    )


def test_auto_takes_buildkit_where_buildx_and_the_engine_are_new_enough(tmp_path: Path) -> None:
    cli = buildx_printing(tmp_path, "v0.29.1")
    chosen = choose("auto", DOCKER_28, "Docker Engine", env={}, which=lambda _: cli)
    assert (chosen.name, chosen.buildx, chosen.builder, chosen.cli) == (
        "buildkit",
        "0.29.1",
        "default",
        cli,
    )
    assert "0.29.1" in chosen.label


@pytest.mark.parametrize(
    ("version", "flavour", "buildx", "why"),
    [
        (DOCKER_28, "Docker Engine", "0.12.1", "older than 0.13"),
        ({"Version": "20.10.24"}, "Docker Engine", "0.29.1", "older than 23"),
        (DOCKER_28, "Podman", "0.29.1", "Podman"),
    ],
)
def test_auto_falls_back_to_classic_and_says_why(
    tmp_path: Path, version: dict[str, str], flavour: str, buildx: str, why: str
) -> None:
    cli = buildx_printing(tmp_path, buildx)
    chosen = choose("auto", version, flavour, env={}, which=lambda _: cli)
    assert chosen.name == "classic"
    assert why in chosen.reason


def test_auto_without_a_buildx_plugin(tmp_path: Path) -> None:
    cli = fake_docker(tmp_path, "echo \"docker: 'buildx' is not a docker command.\" >&2; exit 1\n")
    chosen = choose("auto", DOCKER_28, "Docker Engine", env={}, which=lambda _: cli)
    assert chosen.name == "classic"
    assert "no docker buildx plugin" in chosen.reason


def test_buildkit_asked_for_where_it_cannot_run_is_a_usage_error(tmp_path: Path) -> None:
    cli = buildx_printing(tmp_path, "0.10.0")
    with pytest.raises(UsageError, match=r"--builder buildkit: docker buildx 0\.10\.0") as caught:
        choose("buildkit", DOCKER_28, "Docker Engine", env={}, which=lambda _: cli)
    assert "--builder classic" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="no docker CLI"):
        choose("buildkit", DOCKER_28, "Docker Engine", env={}, which=lambda _: None)


def test_classic_and_unknown_builders() -> None:
    assert choose("classic", DOCKER_28, "Docker Engine", env={}).name == "classic"
    with pytest.raises(UsageError, match="unknown builder 'kaniko'"):
        choose("kaniko", DOCKER_28, "Docker Engine", env={})


def test_the_builder_is_the_docker_driver_one_of_the_context(tmp_path: Path) -> None:
    assert context_name({"DOCKER_HOST": "unix:///x.sock", "DOCKER_CONTEXT": "c"}) == "default"
    assert context_name({"DOCKER_CONTEXT": "colima"}) == "colima"
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "config.json").write_text('{"currentContext": "desktop-linux"}', encoding="utf-8")
    assert context_name({"DOCKER_CONFIG": str(config)}) == "desktop-linux"
    (config / "config.json").write_text("not json", encoding="utf-8")
    assert context_name({"DOCKER_CONFIG": str(config)}) == "default"


def test_the_command_line(tmp_path: Path) -> None:
    backend = Backend(name="buildkit", cli="/usr/bin/docker", buildx="0.29.1", builder="ctx")
    request = BuildRequest(
        context=b"",
        tag="hepml/x:0123456789abcdef",
        no_cache=True,
        build_args={"SOURCE_DATE_EPOCH": "1700000000"},
        labels={"io.hepml.digest": "sha256:ab", "b": "x y; $(rm -rf /)"},
        backend=backend,
    )
    argv = build_argv(request, backend, tmp_path / "m.json")
    assert argv[:5] == ["/usr/bin/docker", "buildx", "build", "--builder", "ctx"]
    for flag in ("--progress=rawjson", "--provenance=false", "--sbom=false", "--no-cache"):
        assert flag in argv
    assert argv[argv.index("--tag") + 1] == "hepml/x:0123456789abcdef"
    assert argv[argv.index("--metadata-file") + 1] == str(tmp_path / "m.json")
    # every value is one argv element: nothing goes through a shell
    assert "b=x y; $(rm -rf /)" in argv
    assert "SOURCE_DATE_EPOCH=1700000000" in argv
    assert argv[-1] == "-"


def _doc(**fields: object) -> str:
    return json.dumps(fields) + "\n"


def _log(vertex: str, text: str) -> dict[str, object]:
    return {"vertex": vertex, "stream": 1, "data": base64.b64encode(text.encode()).decode()}


RUN = "[2/4] RUN apt-get update     && apt-get install -y nothing-here"


def test_progress_reports_steps_and_names_the_failed_one() -> None:
    log, steps = io.StringIO(), list[str]()
    reader = Progress(log, steps.append)
    reader.feed(_doc(vertexes=[{"digest": "sha256:1", "name": "[internal] load .dockerignore"}]))
    reader.feed(_doc(vertexes=[{"digest": "sha256:2", "name": RUN, "started": "t"}]))
    reader.feed(_doc(logs=[_log("sha256:2", "Reading package lists...\r\nE: Unable to locate")]))
    reader.feed(_doc(logs=[_log("sha256:2", " package nothing-here\n")]))
    error = 'process "/bin/sh -c apt-get update && …" did not complete successfully: exit code: 100'
    reader.feed(_doc(vertexes=[{"digest": "sha256:2", "name": RUN, "error": error}]))
    reader.feed("ERROR: failed to build: failed to solve: process …\n")
    assert steps == ["step 2/4: RUN apt-get update && apt-get install -y nothing-here"]
    message = reader.failure(1)
    assert message.startswith(
        "step 2/4 `RUN apt-get update && apt-get install -y nothing-here` failed: exit code: 100"
    )
    assert "E: Unable to locate package nothing-here" in message
    text = log.getvalue()
    assert "Reading package lists" in text
    assert "ERROR: failed to build" in text


def test_steps_are_shown_without_the_rendered_boilerplate() -> None:
    run = (
        'RUN export SOURCE_DATE_EPOCH=315532800     && if [ -n "http://172.17.0.1:2/hepml-ca-ab'
        '.pem" ]; then { curl -fsS -o /tmp/hepml-ca.pem "$X"; } && export SSL_CERT_FILE=/tmp/x;'
        " printf 'Acquire::https::CaInfo \"%s\";\\n' /tmp/x > /tmp/y; export APT_CONFIG=/tmp/y;"
        " fi     && apt-get update     && apt-get install -y jq"
    )
    assert step_summary(run) == "RUN apt-get update && apt-get install -y jq"
    assert step_summary("COPY a /b") == "COPY a /b"


def test_progress_without_a_failed_step_gives_buildx_own_error() -> None:
    reader = Progress(io.StringIO(), lambda _: None)
    reader.feed("ERROR: failed to build: invalid tag\n")
    assert reader.failure(1) == "ERROR: failed to build: invalid tag"
    assert Progress(io.StringIO(), lambda _: None).failure(3) == (
        "docker buildx build exited with status 3"
    )


def _context() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"FROM scratch\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


#: A docker CLI that reads the context from stdin, saves it, reports one step and writes the
#: metadata file named after --metadata-file (or fails, or hangs, as $MODE says).
SCRIPT = """\
meta=""
prev=""
for arg in "$@"; do
  [ "$prev" = "--metadata-file" ] && meta="$arg"
  prev="$arg"
done
cat > "$(dirname "$0")/context.tar"
echo '{"vertexes":[{"digest":"sha256:9","name":"[1/1] FROM scratch","started":"t"}]}' >&2
case "$MODE" in
  fail) echo 'ERROR: failed to build: no' >&2; exit 1 ;;
  hang) sleep 60 ;;
esac
echo '{"containerimage.config.digest": "sha256:c0ff"}' > "$meta"
"""


def _request(cli: str) -> BuildRequest:
    backend = Backend(name="buildkit", cli=cli, buildx="0.29.1", builder="default")
    return BuildRequest(context=_context(), tag="hepml/x:1", backend=backend)


def test_run_build_feeds_the_context_and_reads_the_metadata(tmp_path: Path) -> None:
    cli = fake_docker(tmp_path, SCRIPT)
    request = _request(cli)
    assert request.backend is not None
    steps: list[str] = []
    found = run_build(
        request,
        request.backend,
        log=io.StringIO(),
        progress=steps.append,
        activity=Activity(cancel=threading.Event()),
        env={"MODE": "ok", "PATH": "/usr/bin:/bin"},
    )
    assert found["containerimage.config.digest"] == "sha256:c0ff"
    assert (tmp_path / "context.tar").read_bytes() == request.context
    assert steps == ["step 1/1: FROM scratch"]


def test_run_build_failure_is_a_build_error(tmp_path: Path) -> None:
    request = _request(fake_docker(tmp_path, SCRIPT))
    assert request.backend is not None
    with pytest.raises(BuildError, match="ERROR: failed to build: no"):
        run_build(
            request,
            request.backend,
            log=io.StringIO(),
            progress=lambda _: None,
            activity=Activity(cancel=threading.Event()),
            env={"MODE": "fail", "PATH": "/usr/bin:/bin"},
        )


def test_a_cancel_stops_the_build(tmp_path: Path) -> None:
    request = _request(fake_docker(tmp_path, SCRIPT))
    assert request.backend is not None
    activity = Activity(cancel=threading.Event())

    def cancel_once_running(_: str) -> None:
        activity.cancel.set()
        threading.Thread(target=activity.stop, args=(FakeEngine(),)).start()

    with pytest.raises(Cancelled):
        run_build(
            request,
            request.backend,
            log=io.StringIO(),
            progress=cancel_once_running,
            activity=activity,
            env={"MODE": "hang", "PATH": "/usr/bin:/bin"},
        )
