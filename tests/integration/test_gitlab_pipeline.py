"""The generated GitLab pipeline, executed: gitlab-ci-local (shell executor, ``--docker socket``).

A small user ladder on the bootstrapped debian-base (``t-glci-base`` → ``t-glci-child``, only
environment variables, so their builds take seconds) is written into a temporary git repository
with the pipeline ``ci generate --provider gitlab --docker socket`` makes for it. CI_REGISTRY*
point at the loopback registry fixture; hepml-images is the one under test (``HEPML_INSTALL`` is
``true``: the runner has it, from this checkout).

1. A branch pipeline on "fresh runners": one job at a time, and between jobs every image this
   test made is removed from the engine (never the shared ladder images). The child job must
   pull its parent from the cache the parent job pushed, and build only itself; the registry
   then holds the cache's content tags and nothing published.
2. A default-branch pipeline, all jobs in one run: jobs start after the jobs they need, every
   image is published (from the cache: pulled, tested here, pushed), the SIF goes beside it as
   an ORAS artifact and the DUCC wishlist is written.

JUnit reports are checked in both; the registry password appears in no output.

3. The default ladder (debian-base → debian-hdf5 → debian-python → debian-tensorflow:cpu, the
   shipped specs) as a branch pipeline on fresh runners whose engine is emptied between jobs:
   the second engine, with the containerd image store (``containerd_engine``), so that emptying
   it entirely costs the rest of the suite nothing. The TensorFlow job must pull its three
   parents from the cache and build only itself.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.conftest import require_tool
from tests.integration.helpers import HOST_CA

if TYPE_CHECKING:
    from collections.abc import Iterator

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "group/project"
# the default-ladder test has its own project: the registry is shared with the first test,
# whose default-branch pipeline publishes
LADDER_PROJECT = "group/ladder"
BASE = """\
name: t-glci-base
extends: debian-base
description: the parent of the pipeline test's ladder
version: "1.0.0"
env:
  TEST_RUN: "{run}"
singularity:
  sif: false
smoke:
  - name: the run is set
    run: test -n "$TEST_RUN"
"""
CHILD = """\
name: t-glci-child
extends: t-glci-base
description: the child, pulled parent and all
version: "1.0.0"
env:
  CHILD_SETTING: "1"
smoke:
  - name: the child sees its parent's environment
    run: test -n "$TEST_RUN" && test "$CHILD_SETTING" = 1
"""
JOBS = ("build:debian-base:default", "build:t-glci-base:default", "build:t-glci-child:default")
#: Seconds one gitlab-ci-local run may take (a job, or the whole default-branch pipeline).
RUN_TIMEOUT_S = 900


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _ours(tag: str, registry: Registry, before: set[str]) -> bool:
    """A tag this test made: its specs, its registry project, or a stamp of a shared image."""
    if "t-glci-" in tag or tag.startswith(f"{registry.host}/group/"):
        return True
    return tag.endswith("-tested") and tag not in before


def _remove_ours(client: docker.DockerClient, registry: Registry, before: set[str]) -> list[str]:
    """Remove every image this test made, as a fresh runner would not have them.

    Our tags are removed one by one (a shared image keeps its own tags); an image left without
    tags but still held by a repository digest of ours (a pull by digest, a push) is removed by
    ID, or it would stay in the engine, and a later "pull" would find its layers already there.
    """
    removed = []
    for image in client.images.list():
        for tag in image.tags:
            if _ours(tag, registry, before):
                client.images.remove(tag)
                removed.append(tag)
    for image in client.images.list():
        digests = [d.split("@", 1)[0] for d in image.attrs.get("RepoDigests") or []]
        if not image.tags and digests and all(_ours(d, registry, before) for d in digests):
            client.images.remove(str(image.id), force=True)
            removed.append(str(image.id))
    return removed


def _all_tags(client: docker.DockerClient) -> set[str]:
    return {tag for image in client.images.list() for tag in image.tags}


def _pipeline_repo(path: Path, spec: str, message: str) -> Path:
    """``path`` as a git repository (branch ``feature``) holding the pipeline made for ``spec``."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "hepml_images", "ci", "generate", "--provider", "gitlab"),
            *("--docker", "socket", spec, "-o", ".gitlab-ci.yml"),
        ],
        cwd=path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _git(path, "init", "-q", "-b", "feature")
    (path / ".git" / "info" / "exclude").write_text(
        ".gitlab-ci-local/\n.gitlab-ci-local-variables.yml\nreports/\nsif/\nducc-wishlist.yaml\n"
    )
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", message)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the user ladder and its generated pipeline (branch ``feature``)."""
    path = tmp_path / "repo"
    (path / "specs").mkdir(parents=True)
    run = uuid.uuid4().hex[:12]
    (path / "specs" / "t-glci-base.yaml").write_text(BASE.format(run=run), encoding="utf-8")
    (path / "specs" / "t-glci-child.yaml").write_text(CHILD, encoding="utf-8")
    return _pipeline_repo(path, "specs/t-glci-child.yaml", "the pipeline")


@pytest.fixture
def clean(
    docker_client: docker.DockerClient, registry: Registry
) -> Iterator[tuple[docker.DockerClient, set[str]]]:
    """The engine's tags before the test; afterwards, what the test made is removed."""
    before = _all_tags(docker_client)
    yield docker_client, before
    _remove_ours(docker_client, registry, before)


class GitlabCiLocal:
    """gitlab-ci-local in one repository, with the registry as CI_REGISTRY."""

    def __init__(
        self,
        repo: Path,
        registry: Registry,
        tmp: Path,
        docker_host: str | None = None,
        project: str = PROJECT,
    ) -> None:
        self.tool = require_tool("gitlab-ci-local")
        require_tool("rsync")
        self.repo = repo
        self.registry = registry
        self.image = f"{registry.host}/{project}"
        # the credentials go in the variables file, not on a command line
        variables = {
            "CI_REGISTRY": registry.host,
            "CI_REGISTRY_IMAGE": self.image,
            "CI_REGISTRY_USER": registry.username,
            "CI_REGISTRY_PASSWORD": registry.password,
            "HEPML_INSTALL": "true",
        }
        (repo / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(variables))
        self.state = tmp / "state"
        self.state.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            # the runner has hepml-images: this checkout, with the test environment's tools
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "HEPML_IMAGES_STATE": str(self.state),
            "DOCKER_CONFIG": str(tmp / "docker-config"),
            "COLUMNS": "200",
        }
        if HOST_CA.exists():
            self.env["HEPML_CA_BUNDLE"] = str(HOST_CA)
        if docker_host is not None:
            self.env["DOCKER_HOST"] = docker_host
        self.outputs: list[str] = []

    def fresh_runner(self, client: docker.DockerClient, before: set[str]) -> None:
        """What a fresh runner lacks: the images this test made, and the smoke-test results."""
        _remove_ours(client, self.registry, before)
        shutil.rmtree(self.state)
        self.state.mkdir()

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [self.tool, "--force-shell-executor", "--no-color", "--timestamps", *args],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        output = done.stdout + done.stderr
        self.outputs.append(output)
        assert done.returncode == 0, f"gitlab-ci-local {' '.join(args)}:\n{output[-8000:]}"
        return output


def _junit(repo: Path, name: str) -> ET.Element:
    path = repo / "reports" / f"{name}.xml"
    assert path.is_file(), f"no JUnit report {path}"
    root = ET.parse(path).getroot()  # noqa: S314 - our own file
    cases = root.findall(".//testcase")
    assert cases, f"{path} has no test case"
    assert not root.findall(".//failure"), f"{path} reports a failure"
    return root


def _passed(output: str, job: str) -> bool:
    """gitlab-ci-local's summary says the job passed (``PASS  [ 1.2 s] JOB``)."""
    return re.search(rf"PASS +(\[[^]]*\] +)?{re.escape(job)}\s*$", output, re.MULTILINE) is not None


def _events(output: str) -> tuple[dict[str, int], dict[str, int]]:
    """The line numbers at which each build job started and finished (gitlab-ci-local's log)."""
    started: dict[str, int] = {}
    finished: dict[str, int] = {}
    for number, line in enumerate(output.splitlines()):
        for job in JOBS:
            if re.search(rf"\] {re.escape(job)} +starting shell", line):
                started[job] = number
            elif re.search(rf"\] {re.escape(job)} +finished in", line):
                finished[job] = number
    return started, finished


def _content_tag(output: str, spec: str) -> str:
    match = re.search(rf"hepml/{spec}:([0-9a-f]{{16}})\b", output)
    assert match is not None, f"no content ref of {spec} in:\n{output[-4000:]}"
    return match[1]


def test_the_generated_gitlab_pipeline_runs_and_children_pull_their_parents(
    repo: Path,
    registry: Registry,
    clean: tuple[docker.DockerClient, set[str]],
    tmp_path: Path,
) -> None:
    client, before = clean
    run = GitlabCiLocal(repo, registry, tmp_path)

    # 1. a branch pipeline, one job per fresh runner
    logs = {}
    for job in JOBS:
        run.fresh_runner(client, before)
        logs[job] = run(job)
        assert _passed(logs[job], job), logs[job][-4000:]
    parent_log, child_log = logs[JOBS[1]], logs[JOBS[2]]
    base_tag = _content_tag(parent_log, "t-glci-base")
    child_tag = _content_tag(child_log, "t-glci-child")
    cache = f"{run.image}/cache"
    assert f"t-glci-base:default: pulled from {cache}/t-glci-base:{base_tag}" in child_log, (
        "the child job pulled its parent from the cache instead of building it"
    )
    assert re.search(r"hepml/t-glci-child:\w+ +│ built", child_log), child_log[-4000:]
    assert not re.search(r"hepml/t-glci-base:\w+ +│ built", child_log)
    assert registry.tags(f"{PROJECT}/cache/t-glci-base") == [base_tag]
    assert registry.tags(f"{PROJECT}/cache/t-glci-child") == [child_tag]
    published = [r for r in registry.catalog() if r.startswith(PROJECT) and "/cache/" not in r]
    assert published == [], "a branch pipeline publishes nothing"
    for name in ("debian-base-default", "t-glci-base-default", "t-glci-child-default"):
        _junit(repo, name)

    # 2. the default branch, all jobs in one run (from the cache: nothing is built)
    run.fresh_runner(client, before)
    for report in (repo / "reports").iterdir():
        report.unlink()
    _git(repo, "checkout", "-q", "-b", "main")
    output = run()
    started, finished = _events(output)
    assert set(started) == set(finished) == set(JOBS), output[-4000:]
    for parent, child in itertools.pairwise(JOBS):
        assert finished[parent] < started[child], f"{child} started before {parent} finished"
    assert _passed(output, "ducc-wishlist"), output[-4000:]
    for name in ("debian-base-default", "t-glci-base-default", "t-glci-child-default"):
        _junit(repo, name)
    child_tags = set(registry.tags(f"{PROJECT}/t-glci-child"))
    assert {child_tag, "default", f"{child_tag}-sif"} <= child_tags, child_tags
    assert base_tag in registry.tags(f"{PROJECT}/t-glci-base")
    assert f"{base_tag}-sif" not in registry.tags(f"{PROJECT}/t-glci-base"), "sif: false"
    assert registry.tags(f"{PROJECT}/debian-base"), "the job of the shared base publishes it"
    assert registry.tags(f"{PROJECT}/cache/t-glci-child") == [child_tag], "the cache unchanged"
    wishlist = yaml.safe_load((repo / "ducc-wishlist.yaml").read_text(encoding="utf-8"))
    entries = "\n".join(wishlist["input"])
    assert f"{run.image}/t-glci-child:{child_tag}@sha256:" in entries or (
        f"{run.image}/t-glci-child@sha256:" in entries
    ), entries

    everything = "\n".join(run.outputs)
    for path in (repo / ".gitlab-ci-local" / "output").glob("*.log"):
        everything += path.read_text(errors="replace")
    assert registry.password not in everything, "the registry password was printed"


LADDER_JOBS = (
    "build:debian-base:default",
    "build:debian-hdf5:default",
    "build:debian-python:default",
    "build:debian-tensorflow:cpu",
)


def _empty_engine(host: str) -> None:
    """What a fresh runner's engine holds: nothing (no image, no build cache)."""
    import docker
    import docker.errors

    client = docker.DockerClient(base_url=host, timeout=600)
    try:
        for image in client.images.list(all=True):
            with contextlib.suppress(docker.errors.ImageNotFound):  # gone with a child
                client.images.remove(str(image.id), force=True)
        client.api.prune_builds(all=True)
        assert client.images.list(all=True) == []
    finally:
        client.close()


def test_the_default_ladder_pipeline_pulls_the_tensorflow_jobs_three_parents(
    registry: Registry, containerd_engine: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _pipeline_repo(repo, "debian-tensorflow", "the default ladder's pipeline")
    run = GitlabCiLocal(
        repo, registry, tmp_path, docker_host=containerd_engine, project=LADDER_PROJECT
    )
    logs = {}
    for job in LADDER_JOBS:
        _empty_engine(containerd_engine)
        shutil.rmtree(run.state)
        run.state.mkdir()
        logs[job] = run(job)
        assert _passed(logs[job], job), logs[job][-4000:]
    tf = logs[LADDER_JOBS[-1]]
    cache = f"{run.image}/cache"
    for spec in ("debian-base", "debian-hdf5", "debian-python"):
        tag = _content_tag(tf, spec)
        assert f"{spec}:default: pulled from {cache}/{spec}:{tag}" in tf, (
            f"the TensorFlow job pulled {spec} from the cache instead of building it"
        )
        assert not re.search(rf"hepml/{spec}:\w+ +│ built", tf), f"{spec} was built again"
        assert registry.tags(f"{LADDER_PROJECT}/cache/{spec}") == [tag]
    assert re.search(r"hepml/debian-tensorflow:\w+ +│ built", tf), tf[-4000:]
    tf_tag = _content_tag(tf, "debian-tensorflow")
    assert registry.tags(f"{LADDER_PROJECT}/cache/debian-tensorflow") == [tf_tag]
    published = [
        r for r in registry.catalog() if r.startswith(f"{LADDER_PROJECT}/") and "/cache/" not in r
    ]
    assert published == [], "a branch pipeline publishes nothing"
    root = _junit(repo, "debian-tensorflow-cpu")
    assert "tensorflow computes" in ET.tostring(root, encoding="unicode")
    assert registry.password not in "\n".join(run.outputs)
    _empty_engine(containerd_engine)
