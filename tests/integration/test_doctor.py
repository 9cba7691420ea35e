"""``hepml-images doctor --json`` on this machine, compared with what the machine really has."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images.cli import main
from tests.conftest import require_tool

if TYPE_CHECKING:
    import docker

pytestmark = pytest.mark.integration


def _checks(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--json", *args])
    report = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in report["checks"]}


def test_doctor_sees_the_real_engine(
    docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str]
) -> None:
    docker_cli = require_tool("docker")
    done = subprocess.run(
        [docker_cli, "version", "--format", "{{.Server.APIVersion}} {{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    api_version, server_version = done.stdout.split()
    code, checks = _checks(capsys)
    assert code == 0
    engine = checks["engine"]
    assert engine["status"] == "ok", engine
    assert engine["data"]["api_version"] == api_version
    assert engine["data"]["server_version"] == server_version
    assert f"(API {api_version})" in engine["detail"]
    info = docker_client.info()
    snapshotter = ["driver-type", "io.containerd.snapshotter.v1"] in info.get("DriverStatus", [])
    assert engine["data"]["store"] == ("containerd" if snapshotter else info["Driver"])
    buildx = subprocess.run(
        [docker_cli, "buildx", "version"], capture_output=True, text=True, check=False, timeout=60
    )
    # CI's set-up installs buildx on a Docker Engine 28: there build must use BuildKit
    if buildx.returncode == 0 or os.environ.get("CI") == "true":
        found = re.search(r"(\d+\.\d+(?:\.\d+)?)", buildx.stdout.split()[1])
        assert found is not None, buildx.stdout
        version = found[1]
        assert engine["data"]["builder"].startswith(f"BuildKit (docker buildx {version}")
        assert int(server_version.split(".")[0]) >= 28
    else:
        assert engine["data"]["builder"].startswith("classic")
    runtimes = sorted(info["Runtimes"])
    assert checks["nvidia-runtime"]["data"]["engine_runtimes"] == runtimes
    assert (checks["nvidia-runtime"]["status"] == "ok") == (
        "nvidia" in runtimes
        or any(shutil.which(b) for b in ("nvidia-container-runtime", "nvidia-container-cli"))
        or bool(checks["nvidia-runtime"]["data"]["cdi_specs"])
    )


@pytest.mark.usefixtures("docker_client")
@pytest.mark.parametrize("tool", ["mmdebstrap", "siftool", "skopeo"])
def test_tool_status_matches_the_path(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = _checks(capsys)
    assert code == 0
    path = shutil.which(tool)
    check = checks[tool]
    assert check["status"] == ("ok" if path else "missing"), check
    assert check["data"]["path"] == path
    code, _ = _checks(capsys, "--require", tool)
    assert code == (0 if path else 1)


def test_gpu_status_matches_nvidia_smi(capsys: pytest.CaptureFixture[str]) -> None:
    _, checks = _checks(capsys)
    gpu = checks["gpu"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        assert gpu["status"] != "ok" or gpu["data"]["source"] != "nvidia-smi"
        return
    done = subprocess.run(
        [smi, "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    listed = [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]
    assert [g["index"] for g in gpu["data"]["gpus"]] == listed
