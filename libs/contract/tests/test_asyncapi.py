"""The AsyncAPI documents: generated from the contract, committed, and internally sound."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

from parley_contract import asyncapi, subjects
from parley_contract.events import SERVER_EVENTS, Event
from parley_contract.routes import PAYLOADS

REPO = Path(__file__).resolve().parents[3]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved {ref}"
        node = node[part]
    return node


def test_committed_client_document_is_current() -> None:
    committed = (REPO / asyncapi.DOCS / "client.json").read_bytes()
    assert committed == asyncapi.render_client(), "docs/asyncapi/client.json: make generate"


def test_client_document_covers_every_command_and_event() -> None:
    doc = asyncapi.client_document()
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        _resolve(doc, ref)
    messages = doc["components"]["messages"]
    titles = {m["title"] for m in messages.values()}
    for event in PAYLOADS:
        assert f"{event.value} (command)" in titles and f"{event.value} (reply)" in titles
    for event in SERVER_EVENTS:
        assert f"{event.value} (event)" in titles
    send = messages["message_send_command"]["payload"]
    assert send["properties"]["data"] == {"$ref": "#/components/schemas/MessageSend"}
    assert "clientMessageId" in doc["components"]["schemas"]["MessageSend"]["properties"]
    new = messages["message_new_event"]["payload"]
    assert new["properties"]["data"] == {"$ref": "#/components/schemas/Message"}
    assert "seq" in new["required"]
    security = doc["components"]["securitySchemes"]["accessToken"]
    assert security == {**security, "in": "query", "name": "access_token"}


def test_nats_document_has_commands_events_and_agent_turns() -> None:
    from parley_contract.asyncapi_nats import nats_document

    doc = nats_document()
    for ref in _refs(doc):
        _resolve(doc, ref)
    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert subjects.command(Event.MESSAGE_SEND) in addresses
    assert subjects.command(Event.TOOL_CALL) in addresses
    assert subjects.conversation_events("{conversationId}") in addresses
    assert subjects.conversation_ephemeral("{conversationId}") in addresses
    assert subjects.AGENT_TURN in addresses and subjects.AGENT_STOP in addresses
    assert subjects.QUERY_EVENTS_SINCE in addresses
    durable = doc["channels"]["conversation_events"]["messages"]
    assert "message_new_frame" in durable and "typing_start_frame" not in durable
    ephemeral = doc["channels"]["conversation_ephemeral"]["messages"]
    assert "message_stream_delta_frame" in ephemeral and "message_new_frame" not in ephemeral
    turn = doc["components"]["messages"]["agent_turn"]["payload"]
    assert turn == {"$ref": "#/components/schemas/AgentTurn"}
    assert "conversationId" in doc["components"]["schemas"]["AgentTurn"]["properties"]


def test_documents_follow_the_route_table() -> None:
    from parley_contract.asyncapi_nats import nats_document
    from parley_contract.routes import ROUTES, Service

    client = asyncapi.client_document()["components"]["messages"]
    assert "It writes" in client["message_send_command"]["description"]
    assert "It writes" not in client["message_stop_command"]["description"]
    assert "the gateway" in client["typing_start_command"]["description"]
    doc = nats_document()
    addresses = {ch["address"] for ch in doc["channels"].values()}
    for route in ROUTES.values():
        # A service's command has its subject; the gateway's own commands never reach NATS.
        assert (route.subject in addresses) is (route.service is not Service.GATEWAY)
    request = doc["components"]["messages"]["cmd_message_send_request"]["payload"]
    assert request == {"$ref": "#/components/schemas/MessageSendRequest"}
    schema = doc["components"]["schemas"]["MessageSendRequest"]
    assert schema["properties"]["data"] == {"$ref": "#/components/schemas/MessageSend"}
