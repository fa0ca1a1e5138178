"""The batched rejoins of a storm: batches a little apart share one group, and one round
answers many conversations, each principal still as its own conversation:join would (issue
16, reconnect storm), on the real NATS and the real embedded store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client

from parley_conversation import rejoin as rejoin_module
from parley_conversation.service import ConversationService

from .conftest import Request
from .test_rejoin import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    JOIN,
    MALLORY,
    READ,
    _room,
    as_join,
    in_flight,
    ok,
    rejoin,
)


async def test_in_a_storm_batches_a_little_apart_share_one_group(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With groups of STORM_CONVERSATIONS conversations under way, a group waits
    GROUP_WINDOW_SECONDS before its reads: the other gateways' batches of the conversation
    arriving meanwhile share it (one set of reads), each with its own principals' answers."""
    monkeypatch.setattr(rejoin_module, "STORM_CONVERSATIONS", 1)  # any group is a storm
    monkeypatch.setattr(rejoin_module, "GROUP_WINDOW_SECONDS", 2.0)
    groups: list[list[str]] = []
    real = rejoin_module._answer_many

    async def answer(svc: ConversationService, round_: dict[str, list[Any]]) -> Any:
        groups.extend([p.id for p in principals] for principals in round_.values())
        return await real(svc, round_)

    monkeypatch.setattr(rejoin_module, "_answer_many", answer)
    cid, _ = await _room(request_)
    first = asyncio.create_task(rejoin(nc, cid, [ALICE]))
    while not in_flight(service):  # noqa: ASYNC110 (received, in its window)
        await asyncio.sleep(0.01)
    second = asyncio.create_task(rejoin(nc, cid, [BOB, CAROL]))
    a, bc = await first, await second
    assert groups == [["u-alice", "u-bob", "u-carol"]]
    assert [m["ok"] for m in a["data"]["members"]] == [True]
    assert [m["ok"] for m in bc["data"]["members"]] == [True, False]
    single = await request_(JOIN, {"conversationId": cid}, BOB)
    assert bc["data"]["members"][0]["unreadCount"] == single["data"]["unreadCount"]
    assert bc["data"]["lastSeq"] == a["data"]["lastSeq"] == single["data"]["lastSeq"]


async def test_one_round_answers_many_conversations_each_as_its_own_join(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storm's batched rejoins of different conversations (and gateways) share one round:
    one read of the cursors, the conversations and the names for all of them, one log scan
    each. Every principal still gets its own join's answer, a removed one FORBIDDEN, and a
    name changed by the rejoin's token shows in the conversation as it would in a join."""
    monkeypatch.setattr(rejoin_module, "STORM_CONVERSATIONS", 1)  # any round is a storm
    monkeypatch.setattr(rejoin_module, "GROUP_WINDOW_SECONDS", 2.0)
    rounds: list[list[str]] = []
    real = rejoin_module._answer_many

    async def answer(svc: ConversationService, round_: dict[str, list[Any]]) -> Any:
        rounds.append(sorted(round_))
        return await real(svc, round_)

    monkeypatch.setattr(rejoin_module, "_answer_many", answer)
    first, _ = await _room(request_)
    second, _ = await _room(request_)
    renamed = {**BOB, "name": "Robert"}
    tasks = [
        asyncio.create_task(rejoin(nc, first, [ALICE, CAROL])),
        asyncio.create_task(rejoin(nc, second, [renamed, DAVE])),
        asyncio.create_task(rejoin(nc, "conv-nope", [ALICE])),
        asyncio.create_task(rejoin(nc, first, [DAVE, MALLORY])),
    ]
    a, b, nope, d = [r["data"] for r in await asyncio.gather(*tasks)]
    assert rounds == [sorted([first, second, "conv-nope"])]
    assert [m["ok"] for m in a["members"]] == [True, False]
    assert a["members"][1]["error"]["code"] == "FORBIDDEN"
    assert [m["ok"] for m in d["members"]] == [True, False]
    assert nope["conversation"] is None and nope["members"][0]["error"]["code"] == "FORBIDDEN"
    names = {x.get("userId"): x.get("name") for x in b["conversation"]["participants"]}
    assert names["u-bob"] == "Robert"
    for cid, data, who in ((first, a, ALICE), (first, d, DAVE), (second, b, renamed)):
        single = (await request_(JOIN, {"conversationId": cid}, who))["data"]
        assert as_join(data, data["members"][0]) == single, who


async def test_cursors_of_many_reads_a_crowded_conversation_on_its_own(
    service: ConversationService, request_: Request
) -> None:
    """cursors_of_many gives each conversation what cursors_of gives it, also when one has
    more cursors than the limit (its chunk's read is capped: read alone)."""
    cid, _ = await _room(request_)
    other, _ = await _room(request_)
    for who in (ALICE, DAVE):
        await ok(request_, READ, {"conversationId": cid, "seq": 1}, who)
    store = service.cursors
    for limit in (1, 2, 3, 200):
        many = await store.cursors_of_many([cid, other, "conv-nope"], limit)
        assert many == {
            cid: await store.cursors_of(cid, limit),
            other: await store.cursors_of(other, limit),
            "conv-nope": [],
        }, limit
    assert len((await store.cursors_of_many([cid]))[cid]) == 3
