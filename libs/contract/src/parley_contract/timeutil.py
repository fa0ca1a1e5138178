"""Timestamps as the protocol writes them: ISO-8601 UTC with a trailing Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """ISO-8601 in UTC with a trailing Z, millisecond precision when there is any.

    ``2026-01-01T10:00:00Z`` when the microsecond is 0, else ``2026-01-01T10:00:00.123Z``
    (truncated, not rounded). ``isoformat`` is several times cheaper than ``strftime``.
    """
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    if dt.microsecond:
        return dt.isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"
    return dt.isoformat(timespec="seconds")[:-6] + "Z"


# (epoch second, its "YYYY-MM-DDTHH:MM:SS" prefix): one tuple, so threads never see half of it.
_second: list[tuple[int, str]] = [(-1, "")]


def now_iso() -> str:
    """The current time as ``iso`` writes it (``....mmmZ``), without a datetime per call.

    Called for every envelope and frame; the date part is formatted once per second.
    """
    t = time.time()
    sec = int(t)
    cached, prefix = _second[0]
    if sec != cached:
        prefix = datetime.fromtimestamp(sec, UTC).isoformat(timespec="seconds")[:-6]
        _second[0] = (sec, prefix)
    return f"{prefix}.{int((t - sec) * 1000):03d}Z"
