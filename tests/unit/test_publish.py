"""Pure parts of publishing: error classes, registries, tags, the gate."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from hepml_images import publish
from hepml_images import registry as reg
from hepml_images.engine import EngineError
from hepml_images.errors import UsageError
from hepml_images.pipeline import resolve_specs

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("unauthorized: authentication required", "auth"),
        ("no basic auth credentials", "auth"),
        ("denied: requested access to the resource is denied", "auth"),
        (
            'Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused',
            "transient",
        ),
        ("received unexpected HTTP status: 503 Service Unavailable", "transient"),
        ("read tcp 10.0.0.1:443: connection reset by peer", "transient"),
        ("manifest invalid: manifest invalid", "other"),
    ],
)
def test_engine_push_errors_are_classified(message: str, kind: str) -> None:
    assert reg.kind_of_engine_error(EngineError(message)) == kind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "auth"),
        (403, "auth"),
        (404, "other"),
        (400, "other"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
    ],
)
def test_statuses_are_classified(status: int, kind: str) -> None:
    assert reg.kind_of_status(status) == kind


def test_engine_transport_failures_are_transient() -> None:
    assert reg.kind_of_engine_error(EngineError("anything", transport=True)) == "transient"


@pytest.mark.parametrize(
    ("repository", "registry"),
    [
        ("127.0.0.1:5000/hepml/x", "127.0.0.1:5000"),
        ("gitlab-registry.cern.ch/atlas/ml", "gitlab-registry.cern.ch"),
        ("localhost/x", "localhost"),
        ("atlas/analysisbase", "docker.io"),
        ("ubuntu", "docker.io"),
    ],
)
def test_registry_of(repository: str, registry: str) -> None:
    assert reg.registry_of(repository) == registry


def test_tags_content_first_then_immutable_and_moving() -> None:
    (cpu,) = resolve_specs(["debian-tensorflow"], ["accelerator=cpu"]).selected
    first, others, immutable = publish.planned_tags(cpu)
    assert first == cpu.content_ref.rsplit(":", 1)[1]
    assert others == ["1.0.0-tf2.21.0-py3.11-cpu", "cpu"]
    assert immutable == {"1.0.0-tf2.21.0-py3.11-cpu"}
    assert publish.repositories(cpu, "127.0.0.1:5000/ns/") == [
        "127.0.0.1:5000/ns/debian-tensorflow"
    ]
    with pytest.raises(UsageError, match="nowhere to publish"):
        publish.repositories(cpu, None)


def test_gate_reads_the_result_of_exactly_this_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEPML_IMAGES_STATE", str(tmp_path))
    image = "sha256:" + "ab" * 32
    assert "no smoke-test result" in (publish.gate(image) or "")
    results = tmp_path / "results"
    results.mkdir()
    record = {"image_id": image, "passed": False, "checks": [{"name": "x", "status": "failed"}]}
    (results / f"{'ab' * 32}.json").write_text(json.dumps(record), encoding="utf-8")
    assert publish.gate(image) == "its smoke tests failed: x"
    record["passed"] = True
    (results / f"{'ab' * 32}.json").write_text(json.dumps(record), encoding="utf-8")
    assert publish.gate(image) is None
    # a result stored under the name of another ID does not count
    assert "no smoke-test result" in (publish.gate("sha256:" + "cd" * 32) or "")


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(reg.USER_ENV, raising=False)
    monkeypatch.delenv(reg.PASSWORD_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert reg.credentials("r.example") is None
    monkeypatch.setenv(reg.USER_ENV, "u")
    monkeypatch.setenv(reg.PASSWORD_ENV, "p")
    found = reg.credentials("r.example")
    assert found is not None
    assert found.auth_config("r.example") == {
        "username": "u",
        "password": "p",
        "serveraddress": "r.example",
    }
