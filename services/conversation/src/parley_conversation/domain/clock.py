"""Timestamps as stored: UTC, millisecond precision, strictly increasing versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now_ms() -> datetime:
    """Now in UTC, truncated to milliseconds (what BSON stores), so replies equal reads."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def later_than(previous: datetime | None) -> datetime:
    """Now, but strictly after ``previous``: a conversation's ``updatedAt`` is the version
    its optimistic updates compare, so two updates must never write the same value."""
    at = now_ms()
    if previous is not None and at <= previous:
        at = previous + timedelta(milliseconds=1)
    return at
