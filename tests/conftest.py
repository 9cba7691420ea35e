"""Shared test configuration.

Tools a test needs (hadolint, docker, siftool …) are looked up through ``require_tool``: missing
locally, the test is skipped with the reason; under ``CI=true`` it fails, so nothing hides in CI.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden from the current renderer",
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip (or fail under CI=true) when it is missing.

    Tools of the test dependency group (hadolint, actionlint, check-jsonschema) are installed
    beside this Python, in the virtual environment's ``bin``: that directory is searched first,
    because ``.venv/bin/python -m pytest`` runs with a PATH that need not contain it.
    """
    beside = Path(sys.executable).parent
    path = shutil.which(name, path=os.pathsep.join([str(beside), os.environ.get("PATH", "")]))
    if path is None:
        message = f"{name} is not installed"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing tool is a failure)")
        pytest.skip(message)
    return path


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(autouse=True)
def _no_engine_in_unit_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit test that reaches the real Docker Engine fails: only integration tests may.

    Every connection to the engine is made by ``engine.dockerapi._sdk_client``; unit tests get
    one that fails the test, so policy tests cannot pass by accident against a real daemon.
    """
    if request.node.get_closest_marker("integration") is not None:
        return
    from hepml_images.engine import dockerapi

    def refuse(timeout: int) -> object:
        del timeout
        pytest.fail("a unit test tried to reach the Docker Engine: mark it integration")

    monkeypatch.setattr(dockerapi, "_sdk_client", refuse)
