"""``hepml-images doctor``: the pure evaluation, the parsers, and the probes on fake machines.

No test here talks to a Docker Engine or needs a GPU: the engine probe is replaced, and the
other probes run against temporary directories and fake commands on ``PATH``.
"""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from hepml_images import doctor
from hepml_images.cli import main
from hepml_images.doctor import (
    CHECK_NAMES,
    Credential,
    CredentialsProbe,
    EngineProbe,
    Gpu,
    GpuProbe,
    NvidiaToolkitProbe,
    Probes,
    Status,
    ToolProbe,
    credentials_from_config,
    evaluate,
    parse_nvidia_smi,
    parse_proc_driver_version,
    parse_tool_version,
    required_checks,
)
from hepml_images.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

ENGINE_OK = EngineProbe(
    host="unix:///var/run/docker.sock",
    reachable=True,
    server_version="20.10.24+dfsg1",
    api_version="1.41",
    runtimes=("io.containerd.runc.v2", "runc"),
    default_runtime="runc",
    flavour="Docker Engine",
    store="overlay2",
    gpu_request="gpu",
    builder="classic (the Engine API's builder; no docker buildx)",
)
ENGINE_DOWN = EngineProbe(
    host="unix:///var/run/docker.sock",
    reachable=False,
    error="Error while fetching server API version: ('Connection aborted.',"
    " FileNotFoundError(2, 'No such file or directory'))",
)
A100 = Gpu(index="0", name="NVIDIA A100-SXM4-80GB", driver_version="535.104.05", memory="81920 MiB")


def _tools(*missing: str) -> dict[str, ToolProbe]:
    return {
        name: ToolProbe(name=name, path=None if name in missing else f"/usr/bin/{name}")
        for name in doctor.TOOL_VERSION_ARGS
    }


def healthy() -> Probes:
    return Probes(
        engine=replace(ENGINE_OK, runtimes=("nvidia", "runc")),
        nvidia=NvidiaToolkitProbe(
            binaries={"nvidia-container-cli": "/usr/bin/nvidia-container-cli"}
        ),
        gpu=GpuProbe(source="nvidia-smi", gpus=(A100,), driver_version="535.104.05"),
        tools=_tools(),
        credentials=CredentialsProbe(
            config_path="/root/.docker/config.json",
            config_found=True,
            credentials=(Credential(registry="ghcr.io", source="config"),),
        ),
    )


# --- evaluate ---------------------------------------------------------------------------------


def test_a_healthy_machine_passes_every_check() -> None:
    report = evaluate(healthy(), required_checks(CHECK_NAMES))
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert all(c.status is Status.ok and c.hint is None for c in report.checks), report.checks
    assert report.ok
    assert report.exit_code == 0
    assert report.check("engine").detail == (
        "Docker Engine 20.10.24+dfsg1 (API 1.41) at unix:///var/run/docker.sock; image store"
        " overlay2; GPUs requested through the gpu capability; build backend classic (the"
        " Engine API's builder; no docker buildx)"
    )
    assert report.check("engine").data["store"] == "overlay2"
    assert report.check("gpu").data["gpus"][0]["name"] == "NVIDIA A100-SXM4-80GB"


def test_the_engine_is_always_required() -> None:
    report = evaluate(replace(healthy(), engine=ENGINE_DOWN))
    engine = report.check("engine")
    assert engine.status is Status.missing
    assert "No such file or directory" in engine.detail
    assert engine.hint is not None
    assert "start the Docker Engine" in engine.hint
    assert "DOCKER_HOST" in engine.hint
    assert report.failed == (engine,)
    assert report.exit_code == 1
    assert report.to_json()["ok"] is False


def test_a_missing_optional_check_does_not_fail_unless_required() -> None:
    probes = replace(healthy(), gpu=GpuProbe(), tools=_tools("apptainer", "singularity"))
    report = evaluate(probes)
    assert report.check("gpu").status is Status.missing
    assert report.check("apptainer").status is Status.missing
    assert report.exit_code == 0
    required = evaluate(probes, required_checks(["gpu"]))
    assert [c.name for c in required.failed] == ["gpu"]
    assert required.exit_code == 1


def test_a_warning_fails_a_required_check() -> None:
    probes = replace(healthy(), tools=_tools("tar2sqfs"))
    assert evaluate(probes).check("mksquashfs").status is Status.warning
    assert evaluate(probes, required_checks(["mksquashfs"])).exit_code == 1


def test_unknown_required_names_are_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        required_checks(["gpu", "mmdebstap", "nope"])
    error = caught.value
    assert error.exit_code == 2
    assert "mmdebstap, nope" in error.message
    assert error.hint is not None
    assert "did you mean mmdebstrap?" in error.hint
    assert ", ".join(CHECK_NAMES) in error.hint


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (
            replace(
                ENGINE_DOWN,
                error="('Connection aborted.', PermissionError(13, 'Permission denied'))",
            ),
            "docker group",
        ),
        (
            replace(ENGINE_DOWN, host="tcp://build:2375", host_from_env=True, error="refused"),
            "DOCKER_HOST is tcp://build:2375",
        ),
        (replace(ENGINE_DOWN, error="Read timed out. (read timeout=10)"), "dockerd is running"),
    ],
)
def test_engine_hints_say_what_to_do(probe: EngineProbe, expected: str) -> None:
    hint = evaluate(replace(healthy(), engine=probe)).check("engine").hint
    assert hint is not None
    assert expected in hint


def test_nvidia_runtime_missing_everywhere() -> None:
    probes = replace(healthy(), engine=ENGINE_OK, nvidia=NvidiaToolkitProbe())
    check = evaluate(probes).check("nvidia-runtime")
    assert check.status is Status.missing
    assert "io.containerd.runc.v2, runc" in check.detail
    assert check.hint is not None
    assert "nvidia-ctk runtime configure" in check.hint


def test_nvidia_runtime_from_the_toolkit_alone() -> None:
    probes = replace(healthy(), engine=ENGINE_OK)
    check = evaluate(probes).check("nvidia-runtime")
    assert check.status is Status.ok
    assert "nvidia-container-cli" in check.detail


@pytest.mark.parametrize(
    ("server", "status"), [("20.10.24", Status.warning), ("27.3.1", Status.ok)]
)
def test_cdi_specs_count_from_docker_25(server: str, status: Status) -> None:
    probes = replace(
        healthy(),
        engine=replace(ENGINE_OK, server_version=server),
        nvidia=NvidiaToolkitProbe(cdi_specs=("/etc/cdi/nvidia.yaml",)),
    )
    check = evaluate(probes).check("nvidia-runtime")
    assert check.status is status
    assert "/etc/cdi/nvidia.yaml" in check.detail


def test_nvidia_runtime_with_the_engine_down() -> None:
    probes = replace(healthy(), engine=ENGINE_DOWN, nvidia=NvidiaToolkitProbe())
    check = evaluate(probes).check("nvidia-runtime")
    assert check.status is Status.missing
    assert "runtimes are unknown" in check.detail
    assert check.data["engine_runtimes"] is None


def test_gpu_states() -> None:
    def gpu(probe: GpuProbe) -> doctor.Check:
        return evaluate(replace(healthy(), gpu=probe)).check("gpu")

    assert gpu(GpuProbe()).detail.startswith("no NVIDIA GPU")
    driver_only = gpu(GpuProbe(source="/proc/driver/nvidia/version", driver_version="550.54.14"))
    assert driver_only.status is Status.warning
    assert "550.54.14" in driver_only.detail
    failed = gpu(GpuProbe(nvidia_smi="/usr/bin/nvidia-smi", error="nvidia-smi failed: NVIDIA-SMI"))
    assert failed.status is Status.missing
    assert "nvidia-smi failed" in failed.detail
    two = gpu(GpuProbe(source="nvidia-smi", gpus=(A100, replace(A100, index="1"))))
    assert two.status is Status.ok
    assert two.detail.startswith("2 NVIDIA GPU(s)")


def test_apptainer_falls_back_to_singularity() -> None:
    check = evaluate(replace(healthy(), tools=_tools("apptainer"))).check("apptainer")
    assert check.status is Status.ok
    assert check.data["command"] == "singularity"
    missing = evaluate(replace(healthy(), tools=_tools("apptainer", "singularity")))
    assert missing.check("apptainer").status is Status.missing


@pytest.mark.parametrize("name", ["siftool", "mksquashfs", "mmdebstrap", "skopeo"])
def test_missing_tools_are_missing_with_a_hint(name: str) -> None:
    check = evaluate(replace(healthy(), tools=_tools(name))).check(name)
    assert check.status is Status.missing
    assert check.hint is not None
    assert check.detail == f"{name} not on PATH"


def test_credentials_states() -> None:
    def creds(probe: CredentialsProbe) -> doctor.Check:
        return evaluate(replace(healthy(), credentials=probe)).check("credentials")

    none = creds(CredentialsProbe(config_path="/h/.docker/config.json"))
    assert none.status is Status.warning
    assert "(absent)" in none.detail
    env = creds(
        CredentialsProbe(config_path="/c", credentials=(Credential(registry=None, source="env"),))
    )
    assert env.status is Status.ok
    assert env.detail == "HEPML_REGISTRY_USER/HEPML_REGISTRY_PASSWORD (env)"
    half = creds(CredentialsProbe(config_path="/c", problems=("X is set but Y is not",)))
    assert half.status is Status.warning


# --- parsers ----------------------------------------------------------------------------------


def test_parse_nvidia_smi() -> None:
    text = (
        "0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n"
        "1, NVIDIA GeForce RTX 3090, Ti, 550.54.15, 24576 MiB\n"
        "\n"
        "No devices were found\n"
    )
    gpus = parse_nvidia_smi(text)
    assert [g.index for g in gpus] == ["0", "1"]
    assert gpus[0] == Gpu(
        index="0", name="NVIDIA H100 80GB HBM3", driver_version="550.54.15", memory="81559 MiB"
    )
    assert gpus[1].name == "NVIDIA GeForce RTX 3090, Ti"
    assert parse_nvidia_smi("No devices were found\n") == ()


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            (
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15"
                " UTC 2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
            ),
            "535.104.05",
        ),
        (
            (
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release"
                " Build  (dvs-builder@U16-T02-35-3)  Tue Mar  5 22:15:33 UTC 2024\n"
            ),
            "550.54.15",
        ),
        ("GCC version: 12\n", None),
    ],
)
def test_parse_proc_driver_version(text: str, version: str | None) -> None:
    assert parse_proc_driver_version(text) == version


def test_parse_tool_version() -> None:
    assert parse_tool_version("skopeo", "\nskopeo version 1.9.3\n") == "skopeo version 1.9.3"
    siftool = "Version:  unknown\nRuntime:  go1.19.8 (linux/amd64)\nSpec:     01\n"
    assert parse_tool_version("siftool", siftool) is None
    assert parse_tool_version("siftool", "Version:  2.11.0\n") == "2.11.0"
    assert parse_tool_version("mmdebstrap", "") is None


def test_credentials_from_config_reads_only_names() -> None:
    config = {
        "auths": {
            "registry.example.org": {"auth": "dXNlcjpzM2NyZXQ="},
            "docker.io": {},
        },
        "credsStore": "pass",
        "credHelpers": {"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"},
    }
    creds, problems = credentials_from_config(config, {})
    assert problems == ()
    assert creds == (
        Credential(
            registry="123.dkr.ecr.us-east-1.amazonaws.com", source="helper", helper="ecr-login"
        ),
        Credential(registry="docker.io", source="helper", helper="pass"),
        Credential(registry="registry.example.org", source="config"),
    )


def test_credentials_from_the_environment() -> None:
    both = {"HEPML_REGISTRY_USER": "u", "HEPML_REGISTRY_PASSWORD": "p"}
    assert credentials_from_config({}, both) == ((Credential(registry=None, source="env"),), ())
    creds, problems = credentials_from_config({}, {"HEPML_REGISTRY_PASSWORD": "p"})
    assert creds == ()
    assert problems == ("HEPML_REGISTRY_PASSWORD is set but HEPML_REGISTRY_USER is not",)
    store_only, _ = credentials_from_config({"credsStore": "desktop"}, {})
    assert store_only == (Credential(registry=None, source="helper", helper="desktop"),)


# --- probes on a fake machine -----------------------------------------------------------------


def _fake_command(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_probe_gpu_with_a_fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_command(tmp_path, "nvidia-smi", "echo '0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB'")
    monkeypatch.setenv("PATH", str(tmp_path))
    probe = doctor.probe_gpu(tmp_path / "no-proc")
    assert probe.source == "nvidia-smi"
    assert probe.driver_version == "550.54.15"
    assert probe.gpus[0].memory == "81559 MiB"


def test_probe_gpu_when_nvidia_smi_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_command(
        tmp_path,
        "nvidia-smi",
        "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    probe = doctor.probe_gpu(tmp_path / "no-proc")
    assert probe.gpus == ()
    assert probe.error is not None
    assert "could not communicate" in probe.error
    assert evaluate(replace(healthy(), gpu=probe)).check("gpu").status is Status.missing


def test_probe_gpu_from_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    proc = tmp_path / "nvidia"
    proc.mkdir()
    (proc / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n",
        encoding="utf-8",
    )
    probe = doctor.probe_gpu(proc)
    assert probe.driver_version == "535.104.05"
    assert probe.gpus == ()
    assert probe.error == "nvidia-smi not on PATH"
    assert evaluate(replace(healthy(), gpu=probe)).check("gpu").status is Status.warning
    device = proc / "gpus" / "0000:4e:00.0"
    device.mkdir(parents=True)
    (device / "information").write_text(
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 41\n", encoding="utf-8"
    )
    probe = doctor.probe_gpu(proc)
    assert probe.gpus == (
        Gpu(index="0000:4e:00.0", name="NVIDIA H100 80GB HBM3", driver_version="535.104.05"),
    )
    assert evaluate(replace(healthy(), gpu=probe)).check("gpu").status is Status.ok
    assert doctor.probe_gpu(tmp_path / "absent") == GpuProbe()


def test_probe_nvidia_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_command(tmp_path, "nvidia-container-cli", "true")
    monkeypatch.setenv("PATH", str(tmp_path))
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n", encoding="utf-8")
    (cdi / "other.yaml").write_text("kind: vendor.com/device\n", encoding="utf-8")
    probe = doctor.probe_nvidia_toolkit([str(cdi), str(tmp_path / "absent")])
    assert probe.binaries == {"nvidia-container-cli": str(tmp_path / "nvidia-container-cli")}
    assert probe.cdi_specs == (str(cdi / "nvidia.yaml"),)


def test_probe_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_command(tmp_path, "skopeo", "echo 'skopeo version 9.9.9'")
    _fake_command(tmp_path, "mmdebstrap", "exit 3")
    monkeypatch.setenv("PATH", str(tmp_path))
    tools = doctor.probe_tools()
    assert tools["skopeo"] == ToolProbe(
        name="skopeo", path=str(tmp_path / "skopeo"), version="skopeo version 9.9.9"
    )
    assert tools["mmdebstrap"].path == str(tmp_path / "mmdebstrap")
    assert tools["mmdebstrap"].version is None
    assert tools["siftool"].path is None


def test_probe_credentials_with_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"auths": {"r.io": {"auth": "c2VjcmV0"}', "utf-8")
    probe = doctor.probe_credentials({"DOCKER_CONFIG": str(tmp_path)})
    assert probe.config_found
    assert probe.credentials == ()
    assert probe.problems == (f"{tmp_path / 'config.json'} is not valid JSON (line 1)",)
    assert "c2VjcmV0" not in repr(probe)


def test_probe_credentials_reports_a_missing_helper(tmp_path: Path) -> None:
    config = {"credHelpers": {"gcr.io": "hepml-test-no-such-helper"}}
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    probe = doctor.probe_credentials({"DOCKER_CONFIG": str(tmp_path), "PATH": str(tmp_path)})
    assert probe.credentials == (
        Credential(registry="gcr.io", source="helper", helper="hepml-test-no-such-helper"),
    )
    assert probe.problems == (
        "credential helper docker-credential-hepml-test-no-such-helper not on PATH",
    )


# --- the command ------------------------------------------------------------------------------


def _flat(text: str) -> str:
    """The text without whitespace and box drawing: a table cell wrapped over lines is whole."""
    return "".join(c for c in text if not c.isspace() and not "\u2500" <= c <= "\u257f")


@pytest.fixture
def fake_machine(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every probe but the credentials one answers from ``healthy()``: no engine, no GPU needed.

    The credentials probe is real, reading an empty ``DOCKER_CONFIG`` unless a test sets one.
    """
    fake = healthy()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
    monkeypatch.delenv("HEPML_REGISTRY_USER", raising=False)
    monkeypatch.delenv("HEPML_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setattr(doctor, "probe_engine", lambda: fake.engine)
    monkeypatch.setattr(doctor, "probe_nvidia_toolkit", lambda: fake.nvidia)
    monkeypatch.setattr(doctor, "probe_gpu", lambda: fake.gpu)
    monkeypatch.setattr(doctor, "probe_tools", lambda: fake.tools)


SECRET_PASSWORD = "hunter2-s3cr3t-P4ss"  # noqa: S105 - the secret the test hunts for
SECRET_TOKEN = "eyJhbGciOiJSUzI1NiJ9.hepml-identity-token"  # noqa: S105
SECRET_USER = "hepml-robot-user"  # noqa: S105


@pytest.mark.usefixtures("fake_machine")
@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--json"], ["doctor", "-r", "gpu"]])
def test_no_secret_is_ever_printed(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    auth = base64.b64encode(f"{SECRET_USER}:{SECRET_PASSWORD}".encode()).decode()
    config = {
        "auths": {
            "registry.example.org": {"auth": auth},
            "ghcr.io": {"username": SECRET_USER, "password": SECRET_PASSWORD},
            "gitlab-registry.cern.ch": {"identitytoken": SECRET_TOKEN},
        },
        "credHelpers": {"quay.io": "hepml-test-helper"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("HEPML_REGISTRY_USER", SECRET_USER)
    monkeypatch.setenv("HEPML_REGISTRY_PASSWORD", SECRET_PASSWORD)

    assert main(args) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for registry in ("registry.example.org", "ghcr.io", "gitlab-registry.cern.ch", "quay.io"):
        assert registry in text
    assert "HEPML_REGISTRY_USER" in text
    for secret in (SECRET_PASSWORD, SECRET_TOKEN, SECRET_USER, auth, auth[:12]):
        assert secret not in text
        assert secret not in _flat(text)
    if "--json" in args:
        data = json.loads(captured.out)
        creds = next(c for c in data["checks"] if c["name"] == "credentials")
        sources = {(r["registry"], r["source"]) for r in creds["data"]["registries"]}
        assert (None, "env") in sources
        assert ("ghcr.io", "config") in sources
        assert ("quay.io", "helper") in sources


@pytest.mark.usefixtures("fake_machine")
def test_the_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json", "--require", "skopeo"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"ok", "required", "checks"}
    assert data["ok"] is True
    assert data["required"] == ["engine", "skopeo"]
    assert [c["name"] for c in data["checks"]] == list(CHECK_NAMES)
    for check in data["checks"]:
        assert set(check) == {"name", "status", "detail", "hint", "data"}
        assert check["status"] in {"ok", "missing", "warning"}


@pytest.mark.usefixtures("fake_machine")
def test_exit_1_when_the_engine_is_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "probe_engine", lambda: ENGINE_DOWN)
    assert main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert _flat("No such file or directory") in _flat(captured.out)
    assert "start the Docker Engine" in captured.out
    assert "required check(s) not ok: engine" in captured.err
    assert main(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


@pytest.mark.usefixtures("fake_machine")
def test_exit_1_when_a_required_check_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "probe_gpu", GpuProbe)
    assert main(["doctor"]) == 0
    assert main(["doctor", "--require", "gpu"]) == 1
    assert "required check(s) not ok: gpu" in capsys.readouterr().err


@pytest.mark.usefixtures("fake_machine")
def test_exit_2_for_an_unknown_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--require", "gpus"]) == 2
    text = capsys.readouterr().err
    assert "unknown check(s) for --require: gpus" in text
    assert "did you mean gpu?" in text
    assert "valid names: engine, nvidia-runtime, gpu" in text
