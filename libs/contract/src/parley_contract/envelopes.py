"""Frames of docs/protocol.md section 2: the design doc's success/error envelopes plus ``event``.

Server code builds frames as plain dicts through these helpers and serializes each frame once
(``jsonutil.dumps``); the pydantic models below document and validate the same shapes (tests,
OpenAPI, clients).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.timeutil import now_iso


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None


class SuccessEnvelope(BaseModel):
    success: Literal[True] = True
    data: Any = None
    timestamp: str


class ErrorEnvelope(BaseModel):
    success: Literal[False] = False
    error: ErrorBody
    timestamp: str


# A command id: any string of 1-128 characters or any integer (Socket.IO acks are integers),
# echoed exactly in the reply. orjson reads integers up to 64 bits; larger ones are not JSON
# the gateway can parse (the frame gets "invalid JSON").
MAX_COMMAND_ID_CHARS = 128
CommandId = str | int


def is_command_id(value: object) -> bool:
    """Whether a client's ``id`` is acceptable (bool is not an integer here)."""
    if isinstance(value, str):
        return 0 < len(value) <= MAX_COMMAND_ID_CHARS
    return isinstance(value, int) and not isinstance(value, bool)


class ClientCommand(BaseModel):
    """A client → server frame."""

    model_config = ConfigDict(extra="forbid")
    event: str
    id: Annotated[str, Field(min_length=1, max_length=MAX_COMMAND_ID_CHARS)] | int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ServerFrame(BaseModel):
    """A server → client frame: a reply (with ``id``) or an event."""

    model_config = ConfigDict(extra="forbid")
    event: str
    id: str | int | None = None
    success: bool
    data: Any = None
    error: ErrorBody | None = None
    conversation_id: str | None = Field(default=None, alias="conversationId")
    seq: int | None = None
    # The conversation's sequence epoch: durable events and conversation:joined (4.1).
    epoch: int | None = None
    timestamp: str


def error_body(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code.value, "message": message}
    if details:
        body["details"] = details
    return body


def ok(data: Any = None) -> dict[str, Any]:
    """The design doc's success envelope."""
    return {"success": True, "data": data, "timestamp": now_iso()}


def fail(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The design doc's error envelope."""
    return {"success": False, "error": error_body(code, message, details), "timestamp": now_iso()}


def fail_from(exc: ParleyError) -> dict[str, Any]:
    return fail(exc.code, exc.message, exc.details)


def event_frame(
    event: Event,
    data: Any,
    *,
    conversation_id: str | None = None,
    seq: int | None = None,
    timestamp: str | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """A server → client event. Durable events carry conversationId, seq and epoch."""
    frame: dict[str, Any] = {"event": event.value, "success": True, "data": data}
    if conversation_id is not None:
        frame["conversationId"] = conversation_id
    if seq is not None:
        frame["seq"] = seq
    if epoch is not None:
        frame["epoch"] = epoch
    frame["timestamp"] = timestamp or now_iso()
    return frame


def reply_frame(
    event: str, command_id: CommandId | None, envelope: dict[str, Any]
) -> dict[str, Any]:
    """A reply to a command: the envelope with the command's ``event`` and ``id`` in front."""
    frame: dict[str, Any] = {"event": event}
    if command_id is not None:
        frame["id"] = command_id
    frame.update(envelope)
    return frame


def error_frame(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failure that belongs to no command with an id."""
    return {"event": Event.ERROR.value, **fail(code, message, details)}
