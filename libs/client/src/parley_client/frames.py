"""Server frames as the client hands them out: the event, typed ``data``, and the raw frame.

``data`` is parsed with the contract's model for the event (``wire_schema.EVENT_DATA``),
leniently: a field this build does not know is ignored rather than refused, so a client
keeps working against a newer server. A frame whose data does not fit keeps its raw dict.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.wire_schema import EVENT_DATA

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


@functools.cache
def lenient(model: type[M]) -> type[M]:
    """``model`` with unknown top-level fields ignored (the contract's models forbid them)."""
    config = {**model.model_config, "extra": "ignore"}
    return type(model.__name__, (model,), {"model_config": config})


def parse(model: type[M], data: Any) -> M:
    """Reply or event data as ``model``; ParleyError(INTERNAL_ERROR) when it does not fit."""
    try:
        parsed: M = lenient(model).model_validate(data)
    except ValidationError as exc:
        raise ParleyError(
            ErrorCode.INTERNAL_ERROR,
            f"the server's {model.__name__} does not match this client's contract",
            {"errors": exc.errors(include_url=False)[:5]},
        ) from None
    return parsed


def error_of(body: Any) -> ParleyError:
    """A reply's or frame's ``error`` as a ParleyError (an unknown code keeps its text)."""
    body = body if isinstance(body, dict) else {}
    raw_code = str(body.get("code") or ErrorCode.INTERNAL_ERROR.value)
    details = body.get("details") if isinstance(body.get("details"), dict) else None
    try:
        code = ErrorCode(raw_code)
    except ValueError:
        code = ErrorCode.INTERNAL_ERROR
        details = {**(details or {}), "serverCode": raw_code}
    return ParleyError(code, str(body.get("message") or raw_code), details)


@dataclass(frozen=True, slots=True)
class Frame:
    """One server → client event (replies to commands are not frames: they are returned)."""

    event: str
    data: Any  # the contract's model for the event when it fits, else the raw value
    conversation_id: str | None = None
    seq: int | None = None
    epoch: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def error(self) -> ParleyError | None:
        """An ``error`` frame as a ParleyError."""
        return error_of(self.raw.get("error")) if self.raw.get("success") is False else None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Frame:
        name = str(raw.get("event"))
        data = raw.get("data")
        try:
            models = EVENT_DATA.get(Event(name), ())
        except ValueError:
            models = ()
        for model in models:
            try:
                data = lenient(model).model_validate(data)
                break
            except ValidationError:
                continue
        else:
            if models and data is not None:
                logger.debug("%s data kept raw: it fits none of %s", name, models)
        seq, epoch = raw.get("seq"), raw.get("epoch")
        cid = raw.get("conversationId")
        return cls(
            event=name,
            data=data,
            conversation_id=cid if isinstance(cid, str) else None,
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
            raw=raw,
        )
