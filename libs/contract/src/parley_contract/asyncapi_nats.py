"""The NATS side as an AsyncAPI 3.0 document, generated from the registries and the models.

Command and query subjects (request/reply), a conversation's durable and ephemeral event
subjects, principal notifications, agent turns (JetStream) and stops, tool calls, gateway
kicks and Engine.IO forwarding. Shared pieces: :mod:`parley_contract.asyncapi`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from parley_contract import subjects, wire_schema
from parley_contract.agent_events import AgentPresence, StreamDelta, StreamEnd, StreamStart
from parley_contract.asyncapi import (
    BRIDGE,
    CONVERSATION,
    NATS_COMMANDS,
    SCHEMAS,
    VERSION,
    contract_schemas,
    dump,
    event_key,
    event_message,
    ref,
)
from parley_contract.envelopes import ErrorEnvelope, ServerFrame, SuccessEnvelope
from parley_contract.events import REGISTRY, SERVER_EVENTS, Durability, Event
from parley_contract.internal import (
    AgentStop,
    AgentTurn,
    CommandRequest,
    DeliveryReport,
    EventsSinceRequest,
    RejoinReply,
    RejoinRequest,
    SendBatchReply,
    SendBatchRequest,
)
from parley_contract.routes import (
    COMMAND_REPLIES,
    REJOIN_SUBJECT,
    ROUTES,
    SEND_BATCH_ROUTE,
)

_NATS_DESCRIPTION = """\
How Parley's services talk over NATS (docs/protocol.md is the client side). Requests carry
a `CommandRequest` (the verified principal, the command's data, an idempotency key) and are
answered with a `SuccessEnvelope` or an `ErrorEnvelope`. Events travel as the same frames
clients get (`ServerFrame`): durable ones with `seq` on a conversation's `.evt` subject,
ephemeral ones on `.eph`. KV buckets (presence, instances, sessions, agents, sequences,
turns) are written with plain publishes to `$KV.<bucket>.<key>`. Generated from
libs/contract (python -m parley_contract.asyncapi)."""

_PARAMS = {
    "conversationId": {"description": "a conversation id ([A-Za-z0-9_-], no dots)"},
    "kind": {"enum": ["user", "agent"], "description": "the principal's kind"},
    "principalId": {"description": "a principal id"},
    "sessionId": {"description": "a gateway session id"},
    "instanceKey": {"description": "a gateway's 16 hex digit Engine.IO key"},
}


def _with_data(request: str, data_schema: dict[str, Any]) -> dict[str, Any]:
    return {"allOf": [ref(request), {"properties": {"data": data_schema}}]}


def _reply_envelope(data_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "oneOf": [
            {"allOf": [ref("SuccessEnvelope"), {"properties": {"data": data_schema}}]},
            ref("ErrorEnvelope"),
        ]
    }


def _frames(events: list[Event]) -> dict[str, Any]:
    return {
        f"{event_key(e)}_frame": {"$ref": f"#/components/messages/{event_key(e)}_frame"}
        for e in events
    }


class _Nats:
    def __init__(self) -> None:
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def channel(self, key: str, address: str, description: str, messages: dict[str, Any]) -> None:
        params = {p: _PARAMS[p] for p in _PARAMS if "{" + p + "}" in address}
        ch: dict[str, Any] = {"address": address, "description": description}
        if params:
            ch["parameters"] = params
        ch["messages"] = messages
        self.channels[key] = ch

    def message(self, key: str, title: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.messages[key] = {"name": key, "title": title, "payload": payload}
        return {key: {"$ref": f"#/components/messages/{key}"}}

    def request(
        self, key: str, address: str, who: str, title: str, *, payload: Any, reply: Any
    ) -> None:
        req = self.message(f"{key}_request", title, payload)
        rep = self.message(f"{key}_reply", f"{title}: reply", _reply_envelope(reply))
        self.channel(key, address, f"Request/reply, answered by the {who}.", {**req, **rep})
        self.operations[key] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "title": title,
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}_request"}],
            "reply": {"messages": [{"$ref": f"#/channels/{key}/messages/{key}_reply"}]},
        }

    def publish(self, key: str, action: str, summary: str) -> None:
        self.operations[f"{key}_{action}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": summary,
        }


def nats_document(queries: Mapping[str, type[BaseModel]] | None = None) -> dict[str, Any]:
    """The NATS side. ``queries``: the data model of each query subject whose model lives
    with the service that answers it (subject → model); ``events.since`` is the contract's."""
    n = _Nats()
    extra: list[type[BaseModel]] = list((queries or {}).values())
    requests: list[type[BaseModel]] = []
    for event, who in NATS_COMMANDS.items():
        key = f"cmd_{event_key(event)}"
        # The exact model the handling service decodes the request with (routes.Route).
        request = ROUTES[event].request
        requests.append(request)
        payload = ref(request.__name__)
        reply = COMMAND_REPLIES.get(event)
        n.request(
            key,
            subjects.command(event),
            who,
            f"command {event.value}",
            payload=payload,
            reply=ref(reply.__name__) if reply else {},
        )
    n.request(
        "query_events_since",
        subjects.QUERY_EVENTS_SINCE,
        CONVERSATION,
        "durable events since a seq (resume, gap fill)",
        payload=ref("EventsSinceRequest"),
        reply={
            "type": "object",
            "properties": {
                "events": {"type": "array", "items": ref("ServerFrame")},
                "lastSeq": {"type": "integer"},
                "hasMore": {"type": "boolean"},
            },
        },
    )
    n.request(
        "cmd_conversation_join_batch",
        REJOIN_SUBJECT,
        CONVERSATION,
        "batched rejoin of resumed sessions: one conversation, many principals",
        payload=ref("RejoinRequest"),
        reply=ref("RejoinReply"),
    )
    n.request(
        "cmd_message_send_batch",
        subjects.partition_batch(SEND_BATCH_ROUTE.event, 0).replace(".p0.", ".p{partition}."),
        CONVERSATION,
        "consecutive message:sends of one connection to one conversation, in order, as one "
        "request to the owner of the conversation's partition; one envelope per item",
        payload=ref("SendBatchRequest"),
        reply=ref("SendBatchReply"),
    )
    for subject, model in (queries or {}).items():
        key = "query_" + subject.rsplit(".", 2)[-2] + "_" + subject.rsplit(".", 1)[-1]
        n.request(
            key,
            subject,
            CONVERSATION,
            f"query {subject}",
            payload=_with_data("CommandRequest", ref(model.__name__)),
            reply={},
        )

    durable = [e for e in REGISTRY if REGISTRY[e].durability is Durability.DURABLE]
    ephemeral = [
        e for e in REGISTRY if e in SERVER_EVENTS and REGISTRY[e].durability is Durability.EPHEMERAL
    ]
    for event in durable + ephemeral:
        msg = event_message(event)
        n.messages[f"{event_key(event)}_frame"] = {**msg, "name": f"{event_key(event)}_frame"}
    n.channel(
        "conversation_events",
        subjects.conversation_events("{conversationId}"),
        "A conversation's durable events, with seq (and epoch), in seq order. Published by "
        "the conversation service only; gateways subscribe per joined conversation. Header "
        "`Nats-Msg-Id` is not used: seq is the identity.",
        _frames(durable),
    )
    n.publish("conversation_events", "send", "the conversation service publishes")
    n.channel(
        "conversation_ephemeral",
        subjects.conversation_ephemeral("{conversationId}"),
        "Ephemeral frames (no seq): typing and presence from gateways, agent status and "
        f"streams from agent bridges. Header `{subjects.HEADER_ORIGIN}`: the sending "
        "connection's session (it does not get the frame back). A frame with a seq here is "
        "dropped.",
        _frames(ephemeral),
    )
    n.publish("conversation_ephemeral", "send", "gateways and agent bridges publish")
    notices = [
        Event.CONVERSATION_CREATED,
        Event.CONVERSATION_UPDATED,
        Event.CONVERSATION_DELETED,
        Event.CONVERSATION_READ,
        Event.CONVERSATION_ACTIVITY,
    ]
    n.channel(
        "principal_events",
        subjects.principal_events("{kind}", "{principalId}"),
        "Notifications for one principal wherever it is connected (added to a conversation, "
        "its own reads, new messages in its conversations).",
        _frames(notices),
    )
    n.publish("principal_events", "send", "the conversation service publishes")
    turn = n.message("agent_turn", "agent turn", ref("AgentTurn"))
    n.channel(
        "agent_turn",
        subjects.AGENT_TURN,
        f"Work for the agent bridges: answer this user message. JetStream stream "
        f"`{subjects.STREAM_AGENT_TURNS}` (work queue: one bridge replica takes each turn); "
        f"the running turn is kept in KV `{subjects.KV_TURNS}`.",
        turn,
    )
    n.publish("agent_turn", "send", "the conversation service publishes; bridges consume")
    stop = n.message("agent_stop", "agent stop", ref("AgentStop"))
    n.channel(
        "agent_stop",
        subjects.AGENT_STOP,
        "message:stop fan-out: every bridge replica cancels the conversation's running turn.",
        stop,
    )
    n.publish("agent_stop", "send", "the conversation service publishes; every bridge listens")
    delivery = n.message("delivery_report", "delivery report", ref("DeliveryReport"))
    n.channel(
        "delivery_report",
        subjects.INTERNAL_DELIVERY,
        "Delivery receipts, batched per interval, no reply: how far each principal's "
        "connections received each conversation (docs/protocol.md 3.6).",
        delivery,
    )
    n.publish("delivery_report", "send", "gateways publish; the conversation service applies")
    n.request(
        "agent_tool_call",
        subjects.AGENT_TOOL_CALL,
        BRIDGE,
        "tool call (service side)",
        payload=_with_data("CommandRequest", ref("ToolCallCommand")),
        reply={},
    )
    kick = n.message(
        "session_kick",
        "session kick",
        {
            "type": "object",
            "properties": {"sessionId": {"type": "string"}, "instanceId": {"type": "string"}},
            "required": ["sessionId", "instanceId"],
        },
    )
    n.channel(
        "gateway_session_kick",
        subjects.gateway_session_kick("{sessionId}"),
        "A session was resumed on another gateway: whichever gateway still holds it closes "
        "that connection (1008).",
        kick,
    )
    n.publish("gateway_session_kick", "send", "gateways publish and listen")
    eio = n.message("engineio_request", "Engine.IO request", {"type": "object"})
    n.channel(
        "gateway_engineio",
        subjects.gateway_engineio("{instanceKey}"),
        "Socket.IO long-polling requests forwarded to the gateway holding the Engine.IO "
        "session (request/reply, opaque to other services).",
        eio,
    )
    n.publish("gateway_engineio", "receive", "the gateway holding the session answers")

    schemas = contract_schemas()
    models: list[type[BaseModel]] = [
        CommandRequest,
        EventsSinceRequest,
        RejoinRequest,
        RejoinReply,
        SendBatchRequest,
        SendBatchReply,
        SuccessEnvelope,
        ErrorEnvelope,
        ServerFrame,
        AgentTurn,
        AgentStop,
        DeliveryReport,
        AgentPresence,
        StreamStart,
        StreamDelta,
        StreamEnd,
        *requests,
        *extra,
    ]
    _, top = models_json_schema(
        [(m, "validation") for m in models], by_alias=True, ref_template=SCHEMAS + "{model}"
    )
    for name, schema in top["$defs"].items():
        schemas.setdefault(name, wire_schema.clean(schema) | {"title": name})
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley services on NATS",
            "version": VERSION,
            "description": _NATS_DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": n.channels,
        "operations": n.operations,
        "components": {"messages": n.messages, "schemas": dict(sorted(schemas.items()))},
    }


def render_nats(queries: Mapping[str, type[BaseModel]] | None = None) -> bytes:
    return dump(nats_document(queries))
