"""`hepml-images ci generate`: the job graph, publishing rules, determinism, real validators."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from hepml_images import ci
from hepml_images.cli import main
from hepml_images.pipeline import resolve_directory
from hepml_images.spec.load import shipped_dir
from tests.conftest import require_tool

if TYPE_CHECKING:
    from hepml_images.resolve import ResolvedVariant

ROOT = Path(__file__).resolve().parents[2]
#: The pipelines kept in the repository, by provider.
KEPT = {"gitlab": ROOT / "ci" / "gitlab-ci.yml", "github": ROOT / "ci" / "github-workflow.yml"}
GITLAB_RESERVED = {"workflow", "stages", "variables", "default"}
CACHE_OPTIONS = '--pull-from "$HEPML_CACHE" --push-cache "$HEPML_CACHE"'
GITHUB_CACHE_OPTIONS = '--pull-from "${HEPML_CACHE,,}" --push-cache "${HEPML_CACHE,,}"'


@pytest.fixture(scope="module")
def variants() -> tuple[ResolvedVariant, ...]:
    return resolve_directory(shipped_dir()).variants


def _generate(provider: str, tmp_path: Path, *specs: str) -> str:
    target = tmp_path / provider / "pipeline.yml"
    assert main(["ci", "generate", "--provider", provider, *specs, "-o", str(target)]) == 0
    return target.read_text(encoding="utf-8")


def _gitlab_jobs(text: str) -> dict[str, Any]:
    """The build jobs (one per variant)."""
    return _jobs_of(yaml.safe_load(text))


def _jobs_of(data: dict[str, Any]) -> dict[str, Any]:
    return {
        name: job
        for name, job in data.items()
        if name not in GITLAB_RESERVED and name != ci.WISHLIST_JOB
    }


def _github_build_jobs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data["jobs"].items() if k != ci.WISHLIST_JOB}


def _github_legs(job: dict[str, Any]) -> list[dict[str, str]]:
    """The matrix legs of a GitHub job ([{}] for a job without a matrix)."""
    strategy = job.get("strategy")
    return list(strategy["matrix"]["include"]) if strategy else [{}]


def _github_build_run(job: dict[str, Any], leg: dict[str, str]) -> str:
    step = next(s for s in job["steps"] if s.get("name") == "build and smoke-test")
    run = str(step["run"])
    for key, value in leg.items():
        run = run.replace(f"${{{{ matrix.{key} }}}}", value)
    return run


# --- the job graph --------------------------------------------------------------------------


def test_gitlab_one_job_per_variant_needing_exactly_its_parent(
    variants: tuple[ResolvedVariant, ...], tmp_path: Path
) -> None:
    jobs = _gitlab_jobs(_generate("gitlab", tmp_path))
    assert set(jobs) == {ci.gitlab_job_name(v) for v in variants}
    assert "build:debian-tensorflow:cpu" in jobs
    for variant in variants:
        job = jobs[ci.gitlab_job_name(variant)]
        expected = (
            []
            if variant.parent is None
            else [{"job": ci.gitlab_job_name(variant.parent), "artifacts": False}]
        )
        assert job["needs"] == expected, variant.key
        build = shlex.split(job["script"][-1].split("; else ", 1)[1].removesuffix("; fi"))
        selection = [a for i, a in enumerate(build) if i and build[i - 1] == "--variant"]
        assert build[:3] == ["hepml-images", "build", variant.spec]
        assert selection == [f"{k}={v}" for k, v in variant.matrix]
        assert build[build.index("--junit") + 1] == f"reports/{variant.spec}-{variant.slug}.xml"
        assert build[build.index("--gpu") + 1] == "auto"
        assert job["artifacts"]["reports"]["junit"] == ci.report_path(variant)


def test_github_jobs_need_exactly_their_parents_job_and_matrix_siblings(
    variants: tuple[ResolvedVariant, ...], tmp_path: Path
) -> None:
    jobs = _github_build_jobs(yaml.safe_load(_generate("github", tmp_path)))
    job_of: dict[str, str] = {}
    for job_id, job in jobs.items():
        for leg in _github_legs(job):
            argv = shlex.split(_github_build_run(job, leg))
            spec = argv[2]
            slug = Path(argv[argv.index("--junit") + 1]).stem.removeprefix(f"{spec}-")
            assert f"{spec}:{slug}" not in job_of, "a variant built by two jobs"
            job_of[f"{spec}:{slug}"] = job_id
    assert set(job_of) == {v.key for v in variants}, "one job (or matrix leg) per variant"
    for variant in variants:
        job = jobs[job_of[variant.key]]
        if variant.parent is None:
            assert "needs" not in job, variant.key
        else:
            assert job["needs"] == [job_of[variant.parent.key]], variant.key
    assert (
        job_of["debian-tensorflow:cpu"] == job_of["debian-tensorflow:cuda"] == "debian-tensorflow"
    )
    assert [leg["slug"] for leg in _github_legs(jobs["debian-tensorflow"])] == ["cpu", "cuda"]
    assert job_of["debian-base:default"] == "debian-base"
    assert job_of["atlas-hdf5:21.2.247"] == "atlas-hdf5-21-2-247"
    assert "strategy" not in jobs["debian-base"]


def test_named_specs_bring_their_parents_only(tmp_path: Path) -> None:
    jobs = _gitlab_jobs(_generate("gitlab", tmp_path, "debian-tensorflow"))
    assert set(jobs) == {
        "build:debian-base:default",
        "build:debian-hdf5:default",
        "build:debian-python:default",
        "build:debian-tensorflow:cpu",
        "build:debian-tensorflow:cuda",
    }


def test_spec_files_are_passed_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "my-tools.yaml").write_text(
        "name: my-tools\nextends: debian-base\ncomponents:\n"
        "  system-packages:\n    packages: [git]\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    text = _generate("gitlab", tmp_path, "specs/my-tools.yaml")
    jobs = _gitlab_jobs(text)
    assert (
        "hepml-images build specs/my-tools.yaml --gpu auto"
        in jobs["build:my-tools:default"]["script"][-1]
    )
    assert (
        "hepml-images build debian-base --gpu auto"
        in jobs["build:debian-base:default"]["script"][-1]
    )
    assert "ci generate --provider gitlab specs/my-tools.yaml" in text.splitlines()[1]


def test_mmdebstrap_only_where_debian_is_bootstrapped(tmp_path: Path) -> None:
    jobs = _gitlab_jobs(_generate("gitlab", tmp_path))
    for name, job in jobs.items():
        installs = any("mmdebstrap" in line for line in job["script"])
        assert installs == name.startswith("build:debian-"), name


# --- publishing and credentials -------------------------------------------------------------


def test_gitlab_publishes_only_on_the_default_branch_or_tags(tmp_path: Path) -> None:
    data = yaml.safe_load(_generate("gitlab", tmp_path))
    assert data["variables"]["HEPML_PUBLISH"] == "false"
    # the cache is pushed on every branch: the job token's credentials are there on every branch
    assert data["variables"]["HEPML_CACHE"] == "$CI_REGISTRY_IMAGE/cache"
    assert data["variables"]["HEPML_REGISTRY_USER"] == "$CI_REGISTRY_USER"
    assert data["variables"]["HEPML_REGISTRY_PASSWORD"] == "$CI_REGISTRY_PASSWORD"  # noqa: S105
    for name, job in _jobs_of(data).items():
        publish_rule, other = job["rules"]
        assert publish_rule["if"] == "$CI_COMMIT_TAG || $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
        assert publish_rule["variables"] == {
            "HEPML_PUBLISH": "true",
            "HEPML_REGISTRY": "$CI_REGISTRY_IMAGE",
        }
        assert other == {"when": "on_success"}
        line = job["script"][-1]
        match = re.fullmatch(r'if \[ "\$HEPML_PUBLISH" = true \]; then (.*); else (.*); fi', line)
        assert match is not None, name
        assert match.group(2).endswith(CACHE_OPTIONS), "every branch: parents from the cache"
        assert match.group(1) == match.group(2) + (
            ' --push --registry "$HEPML_REGISTRY" --sif --sif-dir sif'
        ), "publishing adds the push and the SIF (every shipped spec asks for one)"
        assert "--push " not in match.group(2)
    wishlist = data[ci.WISHLIST_JOB]
    assert wishlist["rules"] == [
        {
            "if": "$CI_COMMIT_TAG || $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH",
            "variables": {"HEPML_REGISTRY": "$CI_REGISTRY_IMAGE"},
        }
    ], "only where images are published, and without a when: on_success fallback"
    assert {n["job"] for n in wishlist["needs"]} == set(_jobs_of(data))
    assert wishlist["artifacts"] == {"paths": [ci.WISHLIST]}
    assert wishlist["script"][0].startswith("hepml-images ducc-wishlist ")


def test_github_publishes_only_on_the_default_branch_or_tags(tmp_path: Path) -> None:
    data = yaml.safe_load(_generate("github", tmp_path))
    assert data["permissions"] == {"contents": "read", "packages": "write"}
    default_branch = (
        "github.ref == format('refs/heads/{0}', github.event.repository.default_branch)"
    )
    tag = "startsWith(github.ref, 'refs/tags/')"
    credentials = {
        "HEPML_REGISTRY_USER": "${{ github.actor }}",
        "HEPML_REGISTRY_PASSWORD": "${{ secrets.GITHUB_TOKEN }}",
    }
    for job_id, job in _github_build_jobs(data).items():
        assert job["env"] == {
            "HEPML_CACHE": "ghcr.io/${{ github.repository_owner }}/cache",
            **credentials,
        }, "the cache is pushed on every branch"
        pushing = [s for s in job["steps"] if "--push " in s.get("run", "")]
        assert len(pushing) == 1, job_id
        assert pushing[0]["if"] == f"{default_branch} || {tag}"
        assert pushing[0]["env"] == {"HEPML_REGISTRY": "ghcr.io/${{ github.repository_owner }}"}
        plain = next(s for s in job["steps"] if s.get("name") == "build and smoke-test")
        assert plain["if"] == (
            "github.ref != format('refs/heads/{0}', github.event.repository.default_branch)"
            " && !startsWith(github.ref, 'refs/tags/')"
        )
        assert "env" not in plain
        assert plain["run"].endswith(GITHUB_CACHE_OPTIONS)
        assert pushing[0]["run"] == plain["run"] + (
            ' --push --registry "${HEPML_REGISTRY,,}" --sif --sif-dir sif'
        )
        upload = job["steps"][-1]
        assert upload["uses"] == "actions/upload-artifact@v4"
        assert upload["with"]["path"].startswith("reports/")
        setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-py"))
        assert setup["with"]["cache"] == "pip"
    wishlist = data["jobs"][ci.WISHLIST_JOB]
    assert wishlist["if"] == f"{default_branch} || {tag}"
    assert set(wishlist["needs"]) == set(_github_build_jobs(data))
    assert wishlist["steps"][-1]["with"]["path"] == ci.WISHLIST


_SECRET_KEY = re.compile(r"(PASSWORD|TOKEN|SECRET|REGISTRY_USER)$", re.IGNORECASE)
_REFERENCE = re.compile(r"\$[A-Z_]+|\$\{\{ (secrets\.[A-Z_]+|github\.[a-z_]+) \}\}")


@pytest.mark.parametrize("provider", ci.PROVIDERS)
def test_no_credentials_in_the_files(provider: str, tmp_path: Path) -> None:
    text = _generate(provider, tmp_path)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if _SECRET_KEY.search(str(key)) and not isinstance(value, (dict, list)):
                    assert _REFERENCE.fullmatch(str(value)), f"{key}: {value!r}"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(text))
    for pattern in (r"ghp_", r"github_pat_", r"glpat-", r"docker login", r"-p\s", r"://[^/\s]*@"):
        assert not re.search(pattern, text), pattern


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ci.PROVIDERS)
def test_output_is_deterministic(
    provider: ci.Provider, variants: tuple[ResolvedVariant, ...], tmp_path: Path
) -> None:
    first = _generate(provider, tmp_path / "a")
    assert _generate(provider, tmp_path / "b") == first
    backwards = sorted(variants, key=lambda v: v.key, reverse=True)
    assert ci.generate(backwards, provider) == first
    leaves = [v for v in variants if not any(o.parent is v for o in variants)]
    assert ci.generate(leaves, provider) == first, "parents are added, in the same order"
    assert first.startswith(f"# {ci.HEADER}\n")
    assert "&id" not in first
    assert "*id" not in first


def test_stdout_is_the_same_as_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "deep" / "er" / "pipeline.yml"
    assert main(["ci", "generate", "--provider", "github", "-o", str(target)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["ci", "generate", "--provider", "github"]) == 0
    assert capsys.readouterr().out == target.read_text(encoding="utf-8")


def test_unknown_provider_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ci", "generate", "--provider", "jenkins"]) == 2
    assert "jenkins" in capsys.readouterr().err


# --- the real validators --------------------------------------------------------------------


def _check(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(
    ("provider", "schema"),
    [("gitlab", "vendor.gitlab-ci"), ("github", "vendor.github-workflows")],
)
def test_the_schema_accepts_the_pipeline(provider: str, schema: str, tmp_path: Path) -> None:
    tool = require_tool("check-jsonschema")
    _generate(provider, tmp_path)
    _check([tool, "--builtin-schema", schema, str(tmp_path / provider / "pipeline.yml")])


def test_actionlint_accepts_the_workflow(tmp_path: Path) -> None:
    tool = require_tool("actionlint")
    _generate("github", tmp_path)
    _check([tool, "-no-color", str(tmp_path / "github" / "pipeline.yml")])


# --- the pipelines kept in ci/ --------------------------------------------------------------


@pytest.mark.parametrize("provider", ci.PROVIDERS)
def test_kept_pipelines_are_up_to_date(provider: str, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.yml"
    assert main(["ci", "generate", "--provider", provider, "-o", str(fresh)]) == 0
    kept = KEPT[provider]
    refresh = (
        f"run `make ci-files` (or `hepml-images ci generate --provider {provider}"
        f" -o {kept.relative_to(ROOT)}`) and commit the result"
    )
    if not kept.is_file():
        pytest.fail(f"{kept.relative_to(ROOT)} is missing: {refresh}")
    if kept.read_bytes() != fresh.read_bytes():
        pytest.fail(f"{kept.relative_to(ROOT)} is stale: {refresh}")


# --- runner variants ------------------------------------------------------------------------


def test_socket_uses_the_runners_engine_without_services(tmp_path: Path) -> None:
    data = yaml.safe_load(_generate("gitlab", tmp_path, "--docker", "socket"))
    assert "services" not in data["default"]
    assert not any(key.startswith("DOCKER_") for key in data["variables"])
    dind = yaml.safe_load(_generate("gitlab", tmp_path / "dind"))
    assert dind["default"]["services"] == [ci.GITLAB_DIND]
    assert dind["variables"]["DOCKER_HOST"] == "tcp://docker:2376"
    assert _jobs_of(data) == _jobs_of(dind), "the jobs themselves do not change"


def test_dind_is_refused_for_github(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ci", "generate", "--provider", "github", "--docker", "dind"]) == 2
    assert "GitHub" in capsys.readouterr().err


def test_gpu_tag_sends_gpu_variants_to_gpu_runners_with_gpu_require(
    variants: tuple[ResolvedVariant, ...], tmp_path: Path
) -> None:
    from hepml_images.smoke.checks import wants_gpu

    jobs = _gitlab_jobs(_generate("gitlab", tmp_path, "--gpu-tag", "nvidia"))
    gpu = {ci.gitlab_job_name(v) for v in variants if wants_gpu(v)}
    assert "build:debian-tensorflow:cuda" in gpu
    assert "build:debian-tensorflow:cpu" not in gpu
    for name, job in jobs.items():
        mode = "require" if name in gpu else "auto"
        assert job.get("tags") == (["nvidia"] if name in gpu else None), name
        assert f" --gpu {mode} " in job["script"][-1], name
    untagged = _gitlab_jobs(_generate("gitlab", tmp_path / "plain"))
    assert all("tags" not in job for job in untagged.values())


def test_gpu_tag_on_github_picks_the_runner_per_matrix_leg(tmp_path: Path) -> None:
    data = yaml.safe_load(_generate("github", tmp_path, "--gpu-tag", "nvidia"))
    job = data["jobs"]["debian-tensorflow"]
    assert job["runs-on"] == "${{ matrix.runner }}"
    legs = {leg["slug"]: (leg["gpu"], leg["runner"]) for leg in _github_legs(job)}
    assert legs == {"cpu": ("auto", ci.GITHUB_RUNNER), "cuda": ("require", "nvidia")}
    assert " --gpu ${{ matrix.gpu }} " in _github_build_run(job, {})
    assert data["jobs"]["debian-base"]["runs-on"] == ci.GITHUB_RUNNER


@pytest.mark.parametrize("tag", ["a b", "${{ secrets.X }}", "x;rm", ""])
def test_a_gpu_tag_that_is_not_a_word_is_refused(
    tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ci", "generate", "--provider", "gitlab", "--gpu-tag", tag]) == 2
    assert "--gpu-tag" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("provider", "schema", "options"),
    [
        ("gitlab", "vendor.gitlab-ci", ["--docker", "socket", "--gpu-tag", "nvidia"]),
        ("github", "vendor.github-workflows", ["--gpu-tag", "nvidia"]),
    ],
)
def test_the_schema_accepts_the_runner_variants(
    provider: str, schema: str, options: list[str], tmp_path: Path
) -> None:
    tool = require_tool("check-jsonschema")
    _generate(provider, tmp_path, *options)
    _check([tool, "--builtin-schema", schema, str(tmp_path / provider / "pipeline.yml")])


def test_the_header_repeats_the_options(tmp_path: Path) -> None:
    text = _generate("gitlab", tmp_path, "--docker", "socket", "--gpu-tag", "nvidia")
    assert text.splitlines()[1] == (
        "# regenerate with: hepml-images ci generate --provider gitlab --docker socket"
        " --gpu-tag nvidia -o FILE"
    )


def test_actionlint_accepts_the_gpu_runner_label(tmp_path: Path) -> None:
    """A GPU runner's label is the project's own: actionlint knows it from its config file."""
    tool = require_tool("actionlint")
    _generate("github", tmp_path, "--gpu-tag", "nvidia")
    config = tmp_path / "actionlint.yaml"
    config.write_text("self-hosted-runner:\n  labels: [nvidia]\n", encoding="utf-8")
    _check(
        [tool, "-no-color", "-config-file", str(config), str(tmp_path / "github" / "pipeline.yml")]
    )
