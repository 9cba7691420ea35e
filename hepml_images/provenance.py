"""Provenance, computed in one place: which labels an image carries and where they come from.

Two kinds of labels:

- **Content labels** are part of the image plan (rendered into the Dockerfile, covered by the
  content digest): title, description, version, base name, and our ``io.hepml.*`` namespace
  (spec, variant, content digest, resolved component versions). Same spec, same labels.
- **Build labels** describe one build and are given to the engine at build time, outside the
  digest, so that a new commit does not force a rebuild: ``created`` (SOURCE_DATE_EPOCH, else
  the commit time of the spec's repository, else a fixed default — never the wall clock),
  ``revision`` and ``source`` (the spec's git checkout, credentials stripped from the URL),
  the parent's image ID as ``base.digest`` and the tool version.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from hepml_images import __version__
from hepml_images.times import source_date_epoch

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

OCI = "org.opencontainers.image"
#: SOURCE_DATE_EPOCH when neither the environment nor git gives one (2024-01-01T00:00:00Z).
DEFAULT_EPOCH = 1704067200


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Where the specs of a build come from."""

    epoch: int
    revision: str | None = None
    source: str | None = None
    dirty: bool = False


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed git arguments
            ["git", "-C", str(directory), *args],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def public_url(url: str) -> str:
    """A remote URL without user name, password or token (``https://tok@host/x`` → ``https://host/x``)."""
    if "://" not in url:
        # scp-like git@host:group/repo.git
        return url.split("@", 1)[-1] if "@" in url.split(":", 1)[0] else url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def origin(spec_file: Path, environ: Mapping[str, str] | None = None) -> Origin:
    """The epoch, revision and source URL for specs in ``spec_file``'s directory."""
    env = os.environ if environ is None else environ
    directory = spec_file.resolve().parent
    revision = _git(directory, "rev-parse", "HEAD")
    epoch = source_date_epoch(env)
    if epoch is None:
        commit_time = _git(directory, "log", "-1", "--format=%ct") if revision else None
        epoch = int(commit_time) if commit_time and commit_time.isdigit() else DEFAULT_EPOCH
    remote = _git(directory, "remote", "get-url", "origin") if revision else None
    dirty = bool(_git(directory, "status", "--porcelain", "--", ".")) if revision else False
    return Origin(
        epoch=epoch,
        revision=revision,
        source=public_url(remote) if remote else None,
        dirty=dirty,
    )


def content_labels(
    name: str, description: str, version: str, base_name: str | None
) -> tuple[tuple[str, str], ...]:
    """The OCI labels that follow from the spec alone (part of the plan and its digest)."""
    labels = [
        (f"{OCI}.title", name),
        (f"{OCI}.description", description),
        (f"{OCI}.version", version),
    ]
    if base_name:
        labels.append((f"{OCI}.base.name", base_name))
    return tuple(labels)


#: The build backend that made the image (``buildkit`` or ``classic``): their images differ
#: (history), so ``verify`` rebuilds with the one an image names.
BUILDER_LABEL = "io.hepml.builder"

#: The labels ``build_labels`` can set: the build's own, not the spec's (``verify`` passes
#: exactly these of an image again).
BUILD_LABEL_KEYS = (
    f"{OCI}.created",
    "io.hepml.tool.version",
    BUILDER_LABEL,
    f"{OCI}.revision",
    f"{OCI}.source",
    f"{OCI}.url",
    f"{OCI}.base.digest",
)


def build_labels(
    where: Origin,
    *,
    spec_labels: Iterable[tuple[str, str]],
    parent_id: str | None,
    created: str,
    builder: str | None = None,
) -> dict[str, str]:
    """The labels of one build (not in the digest): time, revision, source, base, tool, backend.

    ``spec_labels`` are the labels the spec sets itself (``Content.labels``); ``builder`` the
    build backend's name.
    """
    labels = {
        f"{OCI}.created": created,
        "io.hepml.tool.version": __version__,
    }
    if builder:
        labels[BUILDER_LABEL] = builder
    if where.revision:
        labels[f"{OCI}.revision"] = where.revision + ("-dirty" if where.dirty else "")
    if where.source:
        labels[f"{OCI}.source"] = where.source
        labels[f"{OCI}.url"] = where.source
    if parent_id:
        labels[f"{OCI}.base.digest"] = parent_id
    from_spec = dict(spec_labels)
    for key in (f"{OCI}.source", f"{OCI}.url"):
        if key in from_spec:  # what the spec says wins over what git says
            labels[key] = from_spec[key]
    return labels
