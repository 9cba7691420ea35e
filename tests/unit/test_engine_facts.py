"""What the engine layer reads from the engine's answers: GPU request form, image store, flavour.

Checked against the documents the Engine API returns (as Docker 20.10, 28 with the containerd
store, and Podman write them); the GPU request is proven on a GPU machine separately.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from hepml_images import engine
from hepml_images.engine.dockerapi import DockerEngine

if TYPE_CHECKING:
    from pathlib import Path

NVIDIA_SPEC = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: all\n"


def _spec_dir(tmp_path: Path, text: str = NVIDIA_SPEC) -> str:
    directory = tmp_path / "cdi"
    directory.mkdir()
    (directory / "nvidia.yaml").write_text(text)
    (directory / "notes.txt").write_text("kind: nvidia.com/gpu")  # not a spec file
    return str(directory)


def test_cdi_specs_are_found_by_kind(tmp_path: Path) -> None:
    directory = _spec_dir(tmp_path)
    assert engine.cdi_specs([directory, str(tmp_path / "missing")]) == (f"{directory}/nvidia.yaml",)
    assert engine.cdi_specs([directory], kind="amd.com/gpu") == ()


@pytest.mark.parametrize(
    ("info", "local", "expected"),
    [
        ({}, (), "gpu"),  # Docker 20.10: no CDI at all
        ({"CDISpecDirs": []}, ("/etc/cdi/nvidia.yaml",), "gpu"),  # CDI off in the engine
        ({"CDISpecDirs": ["/etc/cdi"]}, (), "gpu"),  # CDI on, no NVIDIA spec
        ({"CDISpecDirs": ["/etc/cdi"]}, ("/etc/cdi/nvidia.yaml",), "cdi"),
        (
            {
                "CDISpecDirs": ["/etc/cdi"],
                "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}],
            },
            (),
            "cdi",
        ),
    ],
)
def test_gpu_request_prefers_cdi_where_the_engine_has_nvidia_devices(
    info: dict[str, Any], local: tuple[str, ...], expected: str
) -> None:
    assert engine.gpu_request(info, local) == expected


def test_image_store() -> None:
    assert (
        engine.image_store(
            {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}
        )
        == "overlay2"
    )
    containerd = {
        "Driver": "overlayfs",
        "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
    }
    assert engine.image_store(containerd) == "containerd"


def test_flavour() -> None:
    assert engine.flavour({"Components": [{"Name": "Engine"}]}) == "Docker Engine"
    assert engine.flavour({"Components": [{"Name": "Podman Engine"}]}) == "Podman"


class _Client:
    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info
        self.api = object()

    def info(self) -> dict[str, Any]:
        return self._info


def test_gpu_checks_ask_through_cdi_when_there_is_a_spec(tmp_path: Path) -> None:
    directory = _spec_dir(tmp_path)
    local = DockerEngine(_Client({"CDISpecDirs": [directory]}), "unix:///run/docker.sock")  # type: ignore[arg-type]
    (request,) = local.gpu_devices()
    assert request["Driver"] == "cdi"
    assert request["DeviceIDs"] == ["nvidia.com/gpu=all"]
    plain = DockerEngine(_Client({}), "unix:///run/docker.sock")  # type: ignore[arg-type]
    (request,) = plain.gpu_devices()
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == -1
    # a remote engine's spec directories are not this machine's: its own list decides
    remote = DockerEngine(_Client({"CDISpecDirs": [directory]}), "tcp://gpu-host:2376")  # type: ignore[arg-type]
    (request,) = remote.gpu_devices()
    assert request["Capabilities"] == [["gpu"]]
