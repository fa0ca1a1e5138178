"""The client contract as one JSON Schema document: the source of every generated client type.

Built from the registries and the pydantic models: each command's payload (``commands``),
each server event's ``data`` and each command's reply ``data`` (below), the frames
(``envelopes``), the event names and error codes. ``web/src/generated/contract.ts`` is
compiled from it by json-schema-to-typescript (``make generate``), the gateways' AsyncAPI
document (``parley_contract.asyncapi``) embeds it, and tests keep every generated file equal
to a fresh generation.

``python -m parley_contract.wire_schema [path]`` writes it (default:
``web/src/generated/contract.schema.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from parley_contract.agent_events import (
    AgentPresence,
    AgentThinking,
    AgentToolCalling,
    StreamDelta,
    StreamEnd,
    StreamStart,
)
from parley_contract.envelopes import ClientCommand, ErrorBody, ServerFrame
from parley_contract.errors import ErrorCode
from parley_contract.events import REGISTRY, SERVER_EVENTS, Event
from parley_contract.models import Conversation, Message
from parley_contract.routes import COMMAND_REPLIES, PAYLOADS
from parley_contract.server_events import (
    ActivityData,
    ConnectedData,
    ConversationJoinedData,
    DeliveredData,
    PresenceData,
    ReadData,
    Task,
    TypingData,
)

# The ``data`` of each server → client event (None: no data, or not modelled).
EVENT_DATA: dict[Event, tuple[type[BaseModel], ...]] = {
    Event.CONNECTED: (ConnectedData,),
    Event.RECONNECTED: (ConnectedData,),
    Event.ERROR: (),
    Event.CONVERSATION_CREATED: (Conversation,),
    Event.CONVERSATION_JOINED: (ConversationJoinedData,),
    Event.CONVERSATION_UPDATED: (Conversation,),
    Event.CONVERSATION_DELETED: (Conversation,),
    Event.MESSAGE_NEW: (Message,),
    Event.MESSAGE_UPDATED: (Message,),
    Event.MESSAGE_DELETED: (Message,),
    Event.MESSAGE_REACTED: (Message,),
    Event.AGENT_THINKING: (AgentThinking,),
    Event.AGENT_TOOL_CALLING: (AgentToolCalling,),
    # From an agent bridge, or from a gateway for a connected agent (as presence).
    Event.AGENT_ONLINE: (AgentPresence, PresenceData),
    Event.AGENT_OFFLINE: (AgentPresence, PresenceData),
    Event.MESSAGE_STREAM_START: (StreamStart,),
    Event.MESSAGE_STREAM_DELTA: (StreamDelta,),
    Event.MESSAGE_STREAM_END: (StreamEnd,),
    Event.TASK_CREATED: (Task,),
    Event.TOOL_RESULT: (),
    Event.TYPING_START: (TypingData,),
    Event.TYPING_STOP: (TypingData,),
    Event.PRESENCE_ONLINE: (PresenceData,),
    Event.PRESENCE_OFFLINE: (PresenceData,),
    Event.CONVERSATION_READ: (ReadData,),
    Event.MESSAGE_DELIVERED: (DeliveredData,),
    Event.CONVERSATION_ACTIVITY: (ActivityData,),
}
assert set(EVENT_DATA) == SERVER_EVENTS, "every server event needs its data shape"

# The reply ``data`` of each command that answers with one (others: not modelled).

REF = "#/$defs/{model}"


def _models() -> list[tuple[type[BaseModel], Any]]:
    """Every model once, in a stable order, with the mode it crosses the wire in."""
    seen: dict[type[BaseModel], Any] = {}
    for payload in PAYLOADS.values():
        seen.setdefault(payload, "validation")  # what a client writes
    for models in EVENT_DATA.values():
        for model in models:
            seen.setdefault(model, "serialization")  # what the server writes
    for reply in COMMAND_REPLIES.values():
        seen.setdefault(reply, "serialization")
    seen.setdefault(ClientCommand, "validation")
    seen.setdefault(ServerFrame, "serialization")
    seen.setdefault(ErrorBody, "serialization")
    return list(seen.items())


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _one_of(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    if not models:
        return {"type": "null"}
    if len(models) == 1:
        return _ref(models[0])
    return {"anyOf": [_ref(m) for m in models]}


def _map(title: str, description: str, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "type": "object",
        "properties": entries,
        "required": list(entries),
        "additionalProperties": False,
    }


_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not")
_TYPED = ("type", "$ref", "enum", "const", *_SCHEMA_LISTS, "properties", "items")


def clean(schema: Any) -> Any:
    """A pydantic schema as the generators want it: no per-field ``title`` and nothing
    beside a ``$ref`` (json-schema-to-typescript makes each of those a named type of its
    own: ``ConversationStatus1``...); ``Any`` (an empty schema) is ``unknown``."""
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return {"$ref": schema["$ref"]}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: clean(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [clean(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = clean(value)
        else:
            out[key] = value
    if not any(key in out for key in _TYPED):
        out["tsType"] = "unknown"
    return out


def build() -> dict[str, Any]:
    """The whole contract as a JSON Schema (2020-12) object; deterministic."""
    _, top = models_json_schema(_models(), by_alias=True, ref_template=REF)
    # A definition keeps its own title (its type's name); its fields lose theirs.
    defs: dict[str, Any] = {
        name: {**clean(schema), "title": name} for name, schema in top["$defs"].items()
    }
    events = list(Event)
    defs["Event"] = {
        "title": "Event",
        "description": "Every event name (parley_contract.events.Event).",
        "type": "string",
        "enum": [e.value for e in events],
        "tsEnumNames": [e.name for e in events],
    }
    error_codes = TypeAdapter(ErrorCode).json_schema()
    error_codes["tsEnumNames"] = [c.name for c in ErrorCode]
    defs["ErrorCode"] = error_codes
    commands = {e.value: _ref(model) for e, model in PAYLOADS.items()}
    defs["CommandPayloads"] = _map(
        "CommandPayloads", "The data of each client → server command.", commands
    )
    server = {e.value: _one_of(EVENT_DATA[e]) for e in REGISTRY if e in SERVER_EVENTS}
    defs["EventData"] = _map("EventData", "The data of each server → client event.", server)
    replies = {e.value: _ref(model) for e, model in COMMAND_REPLIES.items()}
    defs["CommandReplies"] = _map(
        "CommandReplies", "The reply data of the commands that answer with one.", replies
    )
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ParleyContract",
        "description": (
            "Parley's client contract (docs/protocol.md), generated from libs/contract by "
            "python -m parley_contract.wire_schema. Do not edit."
        ),
        "type": "object",
        "properties": {
            "event": {"$ref": REF.format(model="Event")},
            "errorCode": {"$ref": REF.format(model="ErrorCode")},
            "commands": {"$ref": REF.format(model="CommandPayloads")},
            "events": {"$ref": REF.format(model="EventData")},
            "replies": {"$ref": REF.format(model="CommandReplies")},
            "command": _ref(ClientCommand),
            "frame": _ref(ServerFrame),
            "error": _ref(ErrorBody),
        },
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }
    return root


def render() -> bytes:
    """The document as committed: indented, keys in a stable order, trailing newline."""
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2) + b"\n"


DEFAULT_PATH = Path("web/src/generated/contract.schema.json")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
