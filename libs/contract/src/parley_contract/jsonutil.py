"""Fast JSON (orjson): serialize each frame once, send the bytes to many sockets."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def model_json(model: BaseModel) -> Any:
    """A model as wire JSON-compatible data: camelCase aliases, unset fields left out."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
