"""GET /v1/search on real processes (issue 17): two gateways, the conversation service, NATS,
the store. A message is found in the caller's own conversation, never in another's; bad
queries get clear errors in the envelope."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from typing import Any

from parley_contract import jsonutil
from parley_devstack.stack import Stack

from .conftest import http_get, token, uid


def search(stack: Stack, who: str, gateway: int = 0, **params: Any) -> tuple[int, Any]:
    url = f"{stack.gateway_url(gateway)}/v1/search?{urllib.parse.urlencode(params)}"
    status, body, _ = http_get(url, token(who))
    return status, jsonutil.loads(body)


async def test_search_finds_ones_own_messages_only(
    stack: Stack, clients: Callable[..., Any]
) -> None:
    alice, bob = uid("u-alice"), uid("u-bob")
    a = await clients(stack.ws_url(0), alice)
    b = await clients(stack.ws_url(1), bob)
    word = uid("zebra")  # unique to this test
    mine = await a.cmd("conversation:create", {"title": "Alice's notes"})
    theirs = await b.cmd("conversation:create", {"title": f"Bob on {word}"})
    assert mine["success"] and theirs["success"]
    mine_id, theirs_id = mine["data"]["_id"], theirs["data"]["_id"]
    sent = await a.cmd(
        "message:send", {"conversationId": mine_id, "content": f"the {word.upper()} crossing"}
    )
    other = await b.cmd("message:send", {"conversationId": theirs_id, "content": f"{word} too"})
    assert sent["success"] and other["success"]
    # Alice, through the other gateway: her message, not Bob's message nor his title.
    status, body = await asyncio.to_thread(search, stack, alice, 1, q=word)
    assert status == 200, body
    items = body["data"]["items"]
    assert [(h["kind"], h["conversationId"]) for h in items] == [("message", mine_id)]
    assert items[0]["message"]["_id"] == sent["data"]["_id"]
    assert items[0]["message"]["snippet"] == f"the {word.upper()} crossing"
    assert items[0]["title"] == "Alice's notes"
    assert body["data"]["nextCursor"] is None
    # Bob: his title and his message.
    status, body = await asyncio.to_thread(search, stack, bob, 0, q=word)
    assert status == 200, body
    assert {(h["kind"], h["conversationId"]) for h in body["data"]["items"]} == {
        ("message", theirs_id),
        ("conversation", theirs_id),
    }
    # Once Bob invites Alice, his conversation is hers to search too.
    added = await b.cmd(
        "conversation:update", {"conversationId": theirs_id, "addParticipants": [alice]}
    )
    assert added["success"], added
    status, body = await asyncio.to_thread(search, stack, alice, 0, q=word)
    assert {h["conversationId"] for h in body["data"]["items"]} == {mine_id, theirs_id}


async def test_bad_searches_get_clear_errors(stack: Stack) -> None:
    who = uid("u-carol")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a", "limit": "many"}, "limit"),
        ({"q": "a", "limit": 51}, "limit"),
        ({"q": "a", "cursor": "garbage"}, "cursor"),
    ]
    for params, field in cases:
        status, body = await asyncio.to_thread(search, stack, who, 0, **params)
        assert status == 422, (params, body)
        assert body["success"] is False
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert (
            field in body["error"]["message"]
            or body["error"].get("details", {}).get("field") == field
        ), (params, body)
    # Far too long: refused by the gateway itself, before NATS.
    status, body = await asyncio.to_thread(search, stack, who, 0, q="y" * 5000)
    assert status == 422 and body["error"]["code"] == "VALIDATION_ERROR"
    # Regex metacharacters are text: a safe, empty answer.
    for q in (".*", "(a+)+$", "[", "\\"):
        status, body = await asyncio.to_thread(search, stack, who, 0, q=q)
        assert status == 200 and body["data"]["items"] == [], (q, body)
    # No token, no search.
    status, _, _ = await asyncio.to_thread(http_get, f"{stack.gateway_url(0)}/v1/search?q=a")
    assert status == 401
