"""What a stored value may be: the one place for the limits every command's data must meet.

The conversation log is MongoDB (BSON): it cannot hold an integer outside signed 64-bit, a
key that starts with ``$`` or contains ``.`` or NUL, or a document over 16 MiB; JSON cannot
carry NaN or Infinity back to a client. Anything like that is refused as a
``VALIDATION_ERROR`` (``details.field`` = the path, e.g. ``metadata.a.0.n``) when the command
is parsed, at the gateway and again at the service, so it never reaches a group commit
where it would fail everyone's batch. docs/security.md lists these values.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Levels of objects/arrays inside a free-form value (metadata, toolResults[].result,
# tool:call arguments), the value itself being level 0.
MAX_FREE_FORM_DEPTH = 8
# Bytes of one free-form value as compact JSON.
MAX_FREE_FORM_BYTES = 64 * 1024
# Levels of objects/arrays in a whole command's data (its own fields count).
MAX_DATA_DEPTH = 16
# Characters of a message's content (message:send, message:edit): PAYLOAD_TOO_LARGE beyond.
# The one content limit: checked once, where the command is validated (the service that
# handles it); gateways announce it in connected.limits.maxContentChars.
MAX_CONTENT_CHARS = 32_000
# Characters of a conversation's or a task's title.
MAX_TITLE_CHARS = 200

# Integer fields of the models: never outside what the store holds.
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
NonNegInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]


def _error(path: str, reason: str) -> PydanticCustomError:
    # ``path`` travels in the context: commands.validation_error appends it to the field.
    return PydanticCustomError("unstorable_value", "{reason}", {"path": path, "reason": reason})


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def bad_key(key: object) -> str | None:
    """Why ``key`` cannot be a stored object key, or None."""
    if not isinstance(key, str):
        return "keys must be strings"
    if key.startswith("$") or "." in key or "\x00" in key:
        return "keys must not start with '$' or contain '.' or NUL"
    return None


def check_value(value: Any, *, max_depth: int = MAX_DATA_DEPTH, path: str = "") -> None:
    """Walk a decoded JSON value (iteratively: no recursion limit to hit) and raise a
    ``PydanticCustomError`` at the first thing the store cannot hold. ``path`` is relative
    to the value (empty = the value itself)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise _error(where, "integer outside signed 64-bit")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _error(where, "NaN and Infinity are not allowed")
        elif isinstance(item, dict):
            if depth >= max_depth:
                raise _error(where, f"nested deeper than {max_depth} levels")
            for key, sub in item.items():
                reason = bad_key(key)
                if reason is not None:
                    raise _error(_join(where, str(key)), reason)
                stack.append((sub, _join(where, key), depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= max_depth:
                raise _error(where, f"nested deeper than {max_depth} levels")
            stack.extend((sub, _join(where, i), depth + 1) for i, sub in enumerate(item))


def check_content(value: str) -> str:
    """A message's content: at most MAX_CONTENT_CHARS (a pydantic after-validator; the error
    becomes PAYLOAD_TOO_LARGE with ``details.limit``, see commands.validation_error)."""
    if len(value) > MAX_CONTENT_CHARS:
        raise PydanticCustomError(
            "payload_too_large",
            "longer than {limit} characters",
            {"limit": MAX_CONTENT_CHARS},
        )
    return value


# A message's content in a command's data.
Content = Annotated[
    str, AfterValidator(check_content), Field(json_schema_extra={"maxLength": MAX_CONTENT_CHARS})
]


def check_free_form(value: Any) -> Any:
    """A free-form value: storable, at most MAX_FREE_FORM_DEPTH levels and
    MAX_FREE_FORM_BYTES bytes. A pydantic before-validator (the error's path is relative)."""
    check_value(value, max_depth=MAX_FREE_FORM_DEPTH)
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        raise _error("", "not a JSON value") from None
    if size > MAX_FREE_FORM_BYTES:
        raise _error("", f"larger than {MAX_FREE_FORM_BYTES} bytes as JSON")
    return value


def is_storable_free_form(value: Any) -> bool:
    """Whether ``value`` passes :func:`check_free_form` (for writers that fall back to text)."""
    try:
        check_free_form(value)
    except PydanticCustomError:
        return False
    return True
