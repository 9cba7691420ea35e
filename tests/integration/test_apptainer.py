"""Grid images on a real Apptainer (1.4, Debian unstable), run as grid jobs run it.

Apptainer runs in a container made by ``hepml_images.devtools.apptainer`` (cached by its
inputs): ``apptainer`` as an unprivileged user with squashfuse, ``apptainer-root`` for builds.
The CLI runs with that ``apptainer`` first on PATH, so its SIF smoke tests go through the
project's own Apptainer path (``apptainer exec --cleanenv``, sif/check.py apptainer_runner).
Every grid command here also runs on a spec the test writes outside specs/.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import ir
from hepml_images.devtools import apptainer as dev
from hepml_images.engine import connect
from hepml_images.pipeline import resolve_directory
from hepml_images.render.writers import render
from hepml_images.spec.load import shipped_dir
from tests.conftest import require_tool
from tests.integration.helpers import Run, run

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

USER_SPEC = """\
name: my-grid
extends: debian-base
description: a user's own grid image, outside specs/
version: "0.1.0"
env:
  MY_GRID: from-the-spec
smoke:
  - name: the spec's environment
    run: test "$MY_GRID" = from-the-spec
  - name: debian 12
    run: grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release
"""


@dataclasses.dataclass(frozen=True)
class Apptainer:
    """The two wrappers and the directory to put first on PATH."""

    user: Path
    root: Path
    version: str

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.user.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Run:
        done = subprocess.run(
            [str(self.user), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=1200,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def apptainer(tmp_path_factory: pytest.TempPathFactory) -> Apptainer:
    """Real Apptainer: the image made once (cached in the engine by its inputs), the wrappers."""
    require_tool("docker")
    require_tool("mmdebstrap")
    engine = connect()
    try:
        user, root = dev.install(engine, tmp_path_factory.mktemp("apptainer-bin"))
    finally:
        engine.close()
    return Apptainer(user=user, root=root, version=dev.version(user))


def cli(state: Path, apptainer: Apptainer, *args: str, **kwargs: Any) -> Run:
    """The CLI with the real Apptainer first on PATH."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = apptainer.env()["PATH"]
    try:
        return run(state, *args, **kwargs)
    finally:
        os.environ["PATH"] = old


def shared_dir(path: Path) -> Path:
    """A directory the unprivileged Apptainer user may write (pytest's are the caller's, 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def user_sif(
    tmp_path_factory: pytest.TempPathFactory, apptainer: Apptainer
) -> tuple[Path, Path, Path, Any]:
    """A spec written here (not in specs/), built, and its SIF made and tested: (dir, state, SIF,
    the ``sif --json`` report)."""
    base = tmp_path_factory.mktemp("user-spec")
    spec = base / "my-grid.yaml"
    spec.write_text(USER_SPEC, encoding="utf-8")
    state, out = base / "state", shared_dir(base / "out")
    built = run(state, "build", str(spec))
    assert built.code == 0, built.stderr[-3000:]
    sif = out / "my-grid-default.sif"
    made = cli(state, apptainer, "sif", str(spec), "--builder", "native", "-o", str(sif), "--json")
    assert made.code == 0, made.stderr[-3000:]
    return base, state, sif, made.json()


def test_the_real_apptainer_runs(apptainer: Apptainer) -> None:
    assert re.fullmatch(r"apptainer version 1\.4\.\d+", apptainer.version), apptainer.version


def test_the_default_sif_passes_its_smoke_tests_through_apptainer_exec(
    default_sif: tuple[Path, Path, Any], apptainer: Apptainer
) -> None:
    state, sif, _ = default_sif
    tested = cli(state, apptainer, "test", str(sif), "--json")
    assert tested.code == 0, tested.stderr[-3000:]
    assert f"testing {sif} (apptainer exec --cleanenv)" in tested.stderr
    [report] = tested.json()["tests"]
    assert report["runner"] == f"apptainer exec --cleanenv ({apptainer.version})"
    names = {c["name"]: c["status"] for c in report["checks"]}
    assert names["TensorFlow 2.21.0 imports and computes"] == "passed"
    assert names["h5py uses HDF5 1.10"] == "passed"
    assert set(names.values()) == {"passed"}, names


def test_a_users_own_spec_gets_a_sif_tested_through_apptainer(
    user_sif: tuple[Path, Path, Path, Any], apptainer: Apptainer
) -> None:
    base, state, sif, report = user_sif
    [tested] = report["tests"]
    assert tested["spec"] == "my-grid"
    assert tested["passed"], tested
    assert tested["runner"] == f"apptainer exec --cleanenv ({apptainer.version})"
    assert {c["name"] for c in tested["checks"]} == {"the spec's environment", "debian 12"}
    # `test FILE.sif` finds the spec by --specs; without it, it says how
    again = cli(state, apptainer, "test", str(sif), "--specs", str(base), "--json")
    assert again.code == 0, again.stderr[-3000:]
    lost = cli(state, apptainer, "test", str(sif))
    assert lost.code == 2
    assert "--specs DIR" in lost.stderr
    # inspect and sandbox take the spec by path too
    inspected = run(state, "inspect", str(base / "my-grid.yaml"), "--json")
    assert inspected.code == 0, inspected.stderr[-2000:]
    assert inspected.json()["labels"]["io.hepml.spec"] == "my-grid"
    assert inspected.json()["smoke_test"]["passed"] is True
    sandbox = base / "sandbox"
    made = run(state, "sandbox", str(base / "my-grid.yaml"), "-o", str(sandbox))
    assert made.code == 0, made.stderr[-2000:]
    assert (sandbox / ".singularity.d" / "labels.json").is_file()


def test_apptainer_inspect_run_and_exec_behave_as_a_user_expects(
    user_sif: tuple[Path, Path, Path, Any], apptainer: Apptainer
) -> None:
    _, _, sif, _ = user_sif
    inspected = apptainer("inspect", "--json", str(sif))
    assert inspected.code == 0, inspected.stderr
    labels = json.loads(inspected.stdout)["data"]["attributes"]["labels"]
    assert labels["io.hepml.spec"] == "my-grid"
    assert labels["io.hepml.smoke.result"] == "passed"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    ran = apptainer("run", str(sif), "sh", "-c", 'echo "$# [$1] [$2] $MY_GRID"', "x", "a b", "c")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.strip() == "2 [a b] [c] from-the-spec"
    clean = apptainer("exec", "--cleanenv", str(sif), "sh", "-c", "echo $MY_GRID; id -u")
    assert clean.stdout.split() == ["from-the-spec", "1000"], clean  # unprivileged, as on the grid


def test_apptainer_pull_oras_gives_the_published_sif_byte_for_byte(
    user_sif: tuple[Path, Path, Path, Any], apptainer: Apptainer, registry: Registry
) -> None:
    base, state, sif, _ = user_sif
    target = f"{registry.host}/hepml-grid"
    published = cli(
        state,
        apptainer,
        "publish",
        str(base / "my-grid.yaml"),
        "--sif",
        "--sif-dir",
        str(sif.parent),
        "--registry",
        target,
        "--json",
        registry=registry,
    )
    assert published.code == 0, published.stderr[-3000:]
    rows = published.json()["sif"]
    assert rows
    assert {r["action"] for r in rows} == {"pushed"}
    reference = rows[0]["reference"]
    assert reference.startswith("oras://")
    pulls = shared_dir(base / "pulled")
    auth = pulls / "auth.json"
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    auth.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}), encoding="utf-8")
    auth.chmod(0o644)
    pulled = pulls / "pulled.sif"
    done = apptainer("pull", "--no-https", "--authfile", str(auth), str(pulled), reference)
    assert done.code == 0, done.stderr[-3000:]
    digest = hashlib.sha256(pulled.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(sif.read_bytes()).hexdigest()
    ran = apptainer("exec", "--cleanenv", str(pulled), "sh", "-c", "echo $MY_GRID")
    assert ran.stdout.strip() == "from-the-spec", ran
    # without credentials the loopback registry refuses
    refused = apptainer("pull", "--no-https", str(pulls / "refused.sif"), reference)
    assert refused.code != 0


def test_a_zstd_sif_runs_on_apptainer_1_4(
    user_sif: tuple[Path, Path, Path, Any], apptainer: Apptainer
) -> None:
    base, state, sif, _ = user_sif
    target = sif.parent / "zstd.sif"
    args = ("sif", str(base / "my-grid.yaml"), "--compression", "zstd", "-o", str(target))
    made = cli(state, apptainer, *args, "--builder", "native", "--json")
    assert made.code == 0, made.stderr[-3000:]
    [tested] = made.json()["tests"]
    assert tested["passed"], tested
    assert tested["runner"].startswith("apptainer exec --cleanenv")
    assert target.stat().st_size < sif.stat().st_size


def _failing_definition(directory: Path) -> tuple[Path, str]:
    """debian-hdf5's rendered files with a step whose list fails in the middle, then a marker."""
    variants = resolve_directory(shipped_dir()).variants
    plan = next(v for v in variants if v.spec == "debian-hdf5").plan
    steps = (
        ir.Run(title="fails", commands=("true", "false", "echo SAME-STEP-WENT-ON")),
        ir.Run(title="after", commands=("echo LATER-STEP-RAN",)),
    )
    rendered = render(dataclasses.replace(plan, steps=steps, tests=()))
    path = directory / "failing.def"
    path.write_text(rendered.singularity, encoding="utf-8")
    path.chmod(0o644)
    return path, rendered.dockerfile


def test_a_definition_file_with_a_failing_step_fails_the_apptainer_build(
    apptainer: Apptainer, tmp_path: Path
) -> None:
    """Real Apptainer runs the rendered %post (as root here: Apptainer's own build namespaces)."""
    work = shared_dir(tmp_path / "def")
    definition, _ = _failing_definition(work)
    target = work / "failing.sif"
    done = subprocess.run(
        [str(apptainer.root), "build", str(target), str(definition)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Running post scriptlet" in output, output[-3000:]
    assert done.returncode != 0, output[-3000:]
    assert "+ false" in output
    assert "SAME-STEP-WENT-ON" not in output
    assert "LATER-STEP-RAN" not in output
    assert not target.exists()


def test_the_dockerfile_fails_on_the_same_step(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    import docker.errors

    _, dockerfile = _failing_definition(tmp_path)
    (tmp_path / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    with pytest.raises(docker.errors.BuildError) as failed:
        docker_client.images.build(path=str(tmp_path), rm=True, forcerm=True, pull=False)
    log = "".join(str(chunk.get("stream", "")) for chunk in failed.value.build_log)
    assert "LATER-STEP-RAN" not in log
    assert "returned a non-zero code: 1" in str(failed.value)


# --- layout parity with Apptainer's own conversion ------------------------------------------

#: Paths only one of the two SIFs has, on purpose (README, "Grid images": parity).
ONLY_NATIVE = {"/cvmfs"}  # the grid's mount point, so sites without underlay can bind it
ONLY_APPTAINER = {"/.singularity.d/Singularity", "/.singularity.d/env/94-appsbase.sh"}
#: What Apptainer adds to every image: its times are the build's (ours: the image's epoch).
ADDED = ("/.singularity.d", "/singularity", "/.exec", "/.run", "/.shell", "/.test", "/environment")
#: The empty bind targets both write, and their directory: Apptainer's time is the build's.
BIND_TARGETS = {"/etc", "/etc/hosts", "/etc/resolv.conf"}
#: Variables that name the SIF file itself.
_NAMES = {"APPTAINER_CONTAINER", "APPTAINER_NAME", "SINGULARITY_CONTAINER", "SINGULARITY_NAME"}


def squashfs_tree(sif: Path) -> dict[str, tuple[str, ...]]:
    """path -> (mode, owner, size, time, link target) of the SIF's root filesystem."""
    from hepml_images.sif import format as sif_format

    partition = sif_format.primary_partition(sif_format.read_sif(sif))
    done = subprocess.run(
        [require_tool("unsquashfs"), "-o", str(partition.offset), "-lln", str(sif)],
        capture_output=True,
        text=True,
        check=True,
    )
    tree: dict[str, tuple[str, ...]] = {}
    for line in done.stdout.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("squashfs-root"):
            continue
        mode, owner, size, day, clock, rest = fields
        name, _, target = rest.partition(" -> ")
        size = "" if mode.startswith("d") else size
        tree[name.removeprefix("squashfs-root")] = (mode, owner, size, f"{day} {clock}", target)
    return tree


@pytest.fixture(scope="module")
def converted(user_sif: tuple[Path, Path, Path, Any], apptainer: Apptainer) -> Path:
    """Apptainer's own ``build SIF docker-daemon:`` of the tested image the native SIF is from."""
    _, _, sif, report = user_sif
    target = sif.parent / "converted.sif"
    done = subprocess.run(
        [
            str(apptainer.root),
            "build",
            str(target),
            f"docker-daemon:{report['sif'][0]['reference']}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def test_the_squashfs_tree_is_apptainers_but_for_the_documented_paths(
    user_sif: tuple[Path, Path, Path, Any], converted: Path
) -> None:
    native, theirs = squashfs_tree(user_sif[2]), squashfs_tree(converted)
    assert set(native) - set(theirs) == ONLY_NATIVE
    assert set(theirs) - set(native) == ONLY_APPTAINER
    for path in sorted(set(native) & set(theirs)):
        mode, owner, size, when, target = native[path]
        other = theirs[path]
        assert (mode, owner, target) == (other[0], other[1], other[4]), path
        if path == "" or path.startswith(ADDED):
            continue  # Apptainer's own files: our scripts, the image's epoch as their time
        assert size == other[2], path
        assert when == other[3] or path in BIND_TARGETS, path


def _env(apptainer: Apptainer, sif: Path, *flags: str) -> dict[str, str]:
    done = apptainer(
        "exec",
        *flags,
        str(sif),
        "env",
        env={"HEPML_APPTAINER_ENV": "MY_GRID,HOST_ONLY", "MY_GRID": "host", "HOST_ONLY": "h"},
    )
    assert done.code == 0, done.stderr
    pairs = (line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs if k not in _NAMES}


def test_the_environment_and_runscript_behave_as_after_apptainers_conversion(
    user_sif: tuple[Path, Path, Path, Any], converted: Path, apptainer: Apptainer
) -> None:
    native = user_sif[2]
    for flags in ((), ("--cleanenv",)):
        ours, theirs = _env(apptainer, native, *flags), _env(apptainer, converted, *flags)
        assert ours == theirs, flags
        assert ours["MY_GRID"] == "from-the-spec"  # the image's value wins, as in Apptainer 1.4
        assert ours["LD_LIBRARY_PATH"] == "/.singularity.d/libs"  # where --nv binds the driver
        assert ("HOST_ONLY" in ours) == (not flags)
    words = ("sh", "-c", 'printf "[%s]" "$@"', "x", "a b", "$HOME", '"q"')
    verbatim = apptainer("run", str(native), *words)
    assert verbatim.stdout == '[a b][$HOME]["q"]', verbatim  # as `docker run` passes them
    assert apptainer("run", "--no-eval", str(converted), *words).stdout == verbatim.stdout
    simple = [apptainer("run", str(s), "echo", "a", "b").stdout for s in (native, converted)]
    assert simple == ["a b\n", "a b\n"]


def test_the_labels_are_apptainers_without_its_build_time_labels(
    user_sif: tuple[Path, Path, Path, Any], converted: Path, apptainer: Apptainer
) -> None:
    def labels(sif: Path) -> dict[str, str]:
        done = apptainer("inspect", "--json", str(sif))
        found: dict[str, str] = json.loads(done.stdout)["data"]["attributes"]["labels"]
        return found

    ours, theirs = labels(user_sif[2]), labels(converted)
    assert ours == {k: v for k, v in theirs.items() if not k.startswith("org.label-schema.")}
    assert "org.label-schema.build-date" in theirs  # the build's time: a SIF would not repeat
