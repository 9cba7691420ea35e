"""Where hepml-images keeps what outlives a command: build logs and smoke-test results."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$HEPML_IMAGES_STATE``, else ``$XDG_STATE_HOME/hepml-images``, else ~/.local/state/…."""
    explicit = os.environ.get("HEPML_IMAGES_STATE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "hepml-images"


def logs_dir() -> Path:
    """Build logs, one file per image and run."""
    return state_dir() / "logs"


def results_dir() -> Path:
    """Smoke-test results, one JSON file per image ID."""
    return state_dir() / "results"
