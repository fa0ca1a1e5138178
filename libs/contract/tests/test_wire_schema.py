"""The committed client contract schema (and so the web's generated types) matches the models."""

from __future__ import annotations

from pathlib import Path

from parley_contract import wire_schema
from parley_contract.events import SERVER_EVENTS, Event
from parley_contract.routes import PAYLOADS

REPO = Path(__file__).resolve().parents[3]


def test_committed_schema_is_current() -> None:
    committed = (REPO / wire_schema.DEFAULT_PATH).read_bytes()
    # On failure: `make generate` (regenerates the schema and web/src/generated/contract.ts).
    assert committed == wire_schema.render(), "contract.schema.json is stale: run make generate"


def test_schema_covers_every_event_and_command() -> None:
    doc = wire_schema.build()
    defs = doc["$defs"]
    assert defs["Event"]["enum"] == [e.value for e in Event]
    assert set(defs["CommandPayloads"]["properties"]) == {e.value for e in PAYLOADS}
    assert set(defs["EventData"]["properties"]) == {e.value for e in SERVER_EVENTS}
    # camelCase on the wire, as the server writes it; no per-field titles left over.
    message = defs["Message"]
    assert "_id" in message["properties"] and "clientMessageId" in message["properties"]
    assert "title" not in message["properties"]["content"]
    assert "title" in defs["Conversation"]["properties"]  # a field named title stays
    assert defs["MessageSend"]["additionalProperties"] is False
