"""Where the package's data (templates, shipped specs) lives.

In a wheel the data sits inside the package (``hepml_images/templates``); in a source checkout or
an editable install it sits at the top of the repository. Both are found through the package's own
location, never through the working directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_path(name: str) -> Path:
    """Return the directory of package data ``name`` (``templates`` or ``specs``)."""
    inside = _PACKAGE / name
    if inside.is_dir():
        return inside
    checkout = _PACKAGE.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"package data {name!r} is missing from the installation at {_PACKAGE}")
