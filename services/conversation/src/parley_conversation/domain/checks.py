"""Validation of free-form fields a document store must be able to hold."""

from __future__ import annotations

from typing import Any

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.limits import MAX_FREE_FORM_DEPTH

MAX_METADATA_DEPTH = MAX_FREE_FORM_DEPTH  # one place for the limits: parley_contract.limits


def check_keys(value: Any, field: str, depth: int = 0) -> None:
    """Refuse keys a document store cannot hold (``$...``, dots) and absurd nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, f"{field}: nested too deeply", {"field": field}
        )
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\x00" in key:
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR,
                    f"{field}: keys must not start with '$' or contain '.'",
                    {"field": field},
                )
            check_keys(sub, field, depth + 1)
    elif isinstance(value, list):
        for sub in value:
            check_keys(sub, field, depth + 1)


def check_emoji(emoji: str) -> str:
    if emoji.startswith("$") or "." in emoji or "\x00" in emoji or not emoji.strip():
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "emoji: not a valid reaction", {"field": "emoji"}
        )
    return emoji
