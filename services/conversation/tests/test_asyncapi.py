"""docs/asyncapi/nats.json is what the contract and this service's query models generate."""

from __future__ import annotations

from pathlib import Path

from parley_contract import subjects
from parley_contract.routes import Service, routes_of
from parley_conversation import asyncapi

REPO = Path(__file__).resolve().parents[3]


def test_committed_nats_document_is_current() -> None:
    committed = (REPO / asyncapi.DEFAULT_PATH).read_bytes()
    assert committed == asyncapi.render(), "docs/asyncapi/nats.json is stale: make generate"


def test_queries_have_their_models() -> None:
    doc = asyncapi.build()
    by_address = {ch["address"]: key for key, ch in doc["channels"].items()}
    key = by_address[subjects.QUERY_MESSAGES_LIST]
    request = doc["components"]["messages"][f"{key}_request"]["payload"]
    data = request["allOf"][1]["properties"]["data"]
    assert data == {"$ref": "#/components/schemas/ListMessagesQuery"}
    assert "afterSeq" in doc["components"]["schemas"]["ListMessagesQuery"]["properties"]


def test_every_command_this_service_answers_is_documented() -> None:
    addresses = {ch["address"] for ch in asyncapi.build()["channels"].values()}
    missing = [r.event.value for r in routes_of(Service.CONVERSATION) if r.subject not in addresses]
    assert missing == [], "add them to parley_contract.asyncapi.NATS_COMMANDS"
