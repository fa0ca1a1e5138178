"""Identifiers: validation (they become NATS subject tokens) and generation."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from pydantic import StringConstraints

from parley_contract.errors import ErrorCode, ParleyError

ID_PATTERN = r"^[A-Za-z0-9_\-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)

# An id safe to put in a NATS subject token: letters, digits, '_' and '-'.
SafeId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: object, field: str) -> str:
    if not is_valid_id(value):
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR,
            f"{field} must be 1-128 letters, digits, '_' or '-'",
            {"field": field},
        )
    assert isinstance(value, str)
    return value


def new_id(prefix: str) -> str:
    """A unique, URL- and subject-safe id such as ``msg-5f3a...``."""
    return f"{prefix}-{secrets.token_hex(10)}"
