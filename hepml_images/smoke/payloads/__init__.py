"""Stand-alone scripts the smoke tests run inside built images.

Each payload is a Python 3.8+ script using only the standard library and whatever framework the
image holds; the runner passes its text as ``python -c SOURCE ARGS...`` inside the container, so
a payload never relies on ``__file__``. They are read as package data, so they travel inside the
wheel with the rest of the package.
"""

from __future__ import annotations

from importlib.resources import files

PAYLOADS = ("cuda_libs", "gpu_check")


def source(name: str) -> str:
    """Return the text of payload ``name`` (``"gpu_check"`` or ``"gpu_check.py"``)."""
    stem = name.removesuffix(".py")
    if stem not in PAYLOADS:
        raise ValueError(f"unknown payload {name!r}: one of {', '.join(PAYLOADS)}")
    return files(__name__).joinpath(f"{stem}.py").read_text(encoding="utf-8")
