"""Times as images and registries record them (pure).

One reading of ``SOURCE_DATE_EPOCH`` and one RFC 3339 form (``2024-01-01T00:00:00Z``: UTC,
whole seconds, as image configurations, OCI annotations and Go's ``time.RFC3339`` write it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from hepml_images.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

EPOCH_ENV = "SOURCE_DATE_EPOCH"
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    """``SOURCE_DATE_EPOCH`` from ``environ`` (None when unset); a clear error when it is bad."""
    raw = environ.get(EPOCH_ENV)
    if raw is None:
        return None
    if not raw.isdigit():
        raise UsageError(
            f"{EPOCH_ENV}={raw!r} is not a number of seconds",
            hint=f"unset it, or give whole seconds since 1970 (e.g. {EPOCH_ENV}=1704067200)",
        )
    return int(raw)


def rfc3339(moment: float | datetime) -> str:
    """The RFC 3339 form of seconds since the epoch or of a datetime (naive ones are UTC)."""
    if isinstance(moment, datetime):
        when = moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    else:
        when = datetime.fromtimestamp(moment, tz=timezone.utc)
    return when.astimezone(timezone.utc).strftime(_FORMAT)


def parse_rfc3339(text: str) -> int | None:
    """Seconds since the epoch of a time written by ``rfc3339`` (None when it is not one)."""
    try:
        return int(datetime.strptime(text, _FORMAT).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None
