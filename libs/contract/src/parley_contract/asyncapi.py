"""Parley's two AsyncAPI 3.0 documents, generated from the registries and the models.

- :func:`client_document`: the client WebSocket API (``/ws`` on every gateway, which serves
  it at ``/asyncapi.json``): each command with its payload and reply, each server event with
  its ``data``. The schemas are :mod:`parley_contract.wire_schema`'s.
- :func:`parley_contract.asyncapi_nats.nats_document`: the NATS side between the services.

``python -m parley_contract.asyncapi`` writes the first to ``docs/asyncapi/client.json``,
``python -m parley_conversation.asyncapi`` the second to ``docs/asyncapi/nats.json`` (it adds
the service's query models); tests keep both equal to a fresh generation (``make generate``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from parley_contract import subjects, wire_schema
from parley_contract.events import REGISTRY, SERVER_EVENTS, Durability, Event
from parley_contract.routes import COMMAND_REPLIES, PAYLOADS, ROUTES, Service

VERSION = "1.0.0"
SCHEMAS = "#/components/schemas/"

# Which service answers a command's NATS subject; the others are the gateway's own
# (typing, presence, leave: no NATS request).
CONVERSATION = f"conversation service (queue group `{subjects.QUEUE_CONVERSATION}`)"
BRIDGE = f"agent bridge (queue group `{subjects.QUEUE_AGENT_BRIDGE}`)"
# Every command a service answers over NATS, and who (from the route table).
NATS_COMMANDS: dict[Event, str] = {
    e: CONVERSATION if r.service is Service.CONVERSATION else BRIDGE
    for e, r in ROUTES.items()
    if r.service is not Service.GATEWAY
}


def dump(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def _rebase(node: Any) -> Any:
    """wire_schema's ``#/$defs/X`` references as ``#/components/schemas/X``."""
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", SCHEMAS) if k == "$ref" else _rebase(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def contract_schemas() -> dict[str, Any]:
    defs: dict[str, Any] = _rebase(wire_schema.build()["$defs"])
    for name in ("CommandPayloads", "EventData", "CommandReplies"):
        defs.pop(name)  # maps for code generators; the messages below say the same
    return defs


def ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMAS + name}


def data_schema(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    if not models:
        return {"type": "null"}
    if len(models) == 1:
        return ref(models[0].__name__)
    return {"anyOf": [ref(m.__name__) for m in models]}


def event_key(event: Event) -> str:
    return event.value.replace(":", "_").replace("-", "_")


# ---------------------------------------------------------------- the client WebSocket API


_HANDLER = {
    Service.GATEWAY: "the gateway the client is connected to",
    Service.CONVERSATION: "the conversation service",
    Service.AGENT_BRIDGE: "an agent bridge",
}


def _command_message(event: Event) -> dict[str, Any]:
    spec, route = REGISTRY[event], ROUTES[event]
    senders = ", ".join(sorted(k.value for k in spec.senders))
    description = (
        f"Who may send it: {senders}. Answered by {_HANDLER[route.service]}. "
        "Reply: the same event and id."
    )
    if route.writes:
        description += (
            " It writes: a retry on another replica is applied once (message:send: send it "
            "again with the same clientMessageId when the outcome is unknown)."
        )
    return {
        "name": event.value,
        "title": f"{event.value} (command)",
        "summary": spec.summary,
        "description": description,
        "payload": {
            "type": "object",
            "properties": {
                "event": {"const": event.value},
                "id": {
                    "anyOf": [
                        {"type": "string", "minLength": 1, "maxLength": 128},
                        {"type": "integer"},
                    ],
                    "description": "optional; with it the server answers exactly once",
                },
                "data": ref(PAYLOADS[event].__name__),
            },
            "required": ["event"],
            "additionalProperties": False,
        },
    }


def _reply_message(event: Event) -> dict[str, Any]:
    reply = COMMAND_REPLIES.get(event)
    data: dict[str, Any] = ref(reply.__name__) if reply else {}
    frame = {"event": {"const": event.value}, "id": {"type": ["string", "integer"]}}
    return {
        "name": f"{event.value} reply",
        "title": f"{event.value} (reply)",
        "payload": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {**frame, "success": {"const": True}, "data": data},
                    "required": ["event", "success", "timestamp"],
                },
                {
                    "type": "object",
                    "properties": {
                        **frame,
                        "success": {"const": False},
                        "error": ref("ErrorBody"),
                    },
                    "required": ["event", "success", "error", "timestamp"],
                },
            ]
        },
    }


def event_message(event: Event) -> dict[str, Any]:
    spec = REGISTRY[event]
    durable = spec.durability is Durability.DURABLE
    props: dict[str, Any] = {
        "event": {"const": event.value},
        "success": {"const": event is not Event.ERROR},
        "data": data_schema(wire_schema.EVENT_DATA[event]),
        "conversationId": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
    }
    if event is Event.ERROR:
        props["error"] = ref("ErrorBody")
    if durable or event is Event.CONVERSATION_JOINED:
        props["epoch"] = {"type": "integer", "minimum": 0}
    if durable:
        props["seq"] = {"type": "integer", "minimum": 1}
    required = ["event", "success", "timestamp"] + (["conversationId", "seq"] if durable else [])
    return {
        "name": event.value,
        "title": f"{event.value} (event)",
        "summary": spec.summary,
        "description": f"{spec.durability.value}"
        + (" (stored, ordered by seq)" if durable else ""),
        "payload": {"type": "object", "properties": props, "required": required},
    }


def client_document() -> dict[str, Any]:
    """The AsyncAPI document of ``/ws`` (docs/protocol.md), from the gateway's side."""
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_messages: dict[str, Any] = {}
    for event in REGISTRY:
        if event in PAYLOADS:
            cmd, rep = f"{event_key(event)}_command", f"{event_key(event)}_reply"
            messages[cmd] = _command_message(event)
            channel_messages[cmd] = {"$ref": f"#/components/messages/{cmd}"}
            op: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "summary": REGISTRY[event].summary,
                "messages": [{"$ref": f"#/channels/ws/messages/{cmd}"}],
            }
            # With an id, every command gets exactly one reply.
            messages[rep] = _reply_message(event)
            channel_messages[rep] = {"$ref": f"#/components/messages/{rep}"}
            op["reply"] = {
                "channel": {"$ref": "#/channels/ws"},
                "messages": [{"$ref": f"#/channels/ws/messages/{rep}"}],
            }
            operations[f"{event_key(event)}_command"] = op
        if event in SERVER_EVENTS:
            evt = f"{event_key(event)}_event"
            messages[evt] = event_message(event)
            channel_messages[evt] = {"$ref": f"#/components/messages/{evt}"}
            operations[evt] = {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "summary": REGISTRY[event].summary,
                "messages": [{"$ref": f"#/channels/ws/messages/{evt}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley client WebSocket API",
            "version": VERSION,
            "description": (
                "One JSON object per WebSocket frame on `/ws` of any gateway "
                "(docs/protocol.md). Generated from libs/contract "
                "(python -m parley_contract.asyncapi); every gateway serves it at "
                "`/asyncapi.json`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "{host}",
                "protocol": "ws",
                "pathname": "/ws",
                "variables": {"host": {"default": "127.0.0.1:8001"}},
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            }
        },
        "channels": {"ws": {"address": "/ws", "messages": channel_messages}},
        "operations": operations,
        "components": {
            "securitySchemes": {
                "accessToken": {
                    "type": "httpApiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "A JWT (or `Authorization: Bearer <jwt>`): docs/security.md",
                }
            },
            "messages": messages,
            "schemas": contract_schemas(),
        },
    }


# ---------------------------------------------------------------- files

DOCS = Path("docs/asyncapi")


def render_client() -> bytes:
    return dump(client_document())


def main(argv: list[str] | None = None) -> int:
    """Writes docs/asyncapi/client.json (the NATS document, which needs the conversation
    service's query models, is written by ``python -m parley_conversation.asyncapi``)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DOCS / "client.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_client())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
