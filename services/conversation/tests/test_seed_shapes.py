"""Issue 13 point 2: the seed's shapes are accepted as written, on the real service (real
NATS, the real store).

- every seed sample message (``libs/contract/tests/data/sample-messages.jsonl``), minus what
  the server assigns (``_id``, ``createdAt``, ``createdBy``), is a valid ``message:send`` for
  the principal that wrote it, and is stored with every field as the sample has it;
- participants ``{userId | agentId, role}`` (the seed's Conversation, section 3.1) in
  create and update, stored and returned in that shape with ``joinedAt``/``leftAt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_conversation.service import ConversationService

from .conftest import Request, agent, service_principal, user

SAMPLES = (Path(__file__).resolve().parents[3] / "libs" / "contract" / "tests" / "data").joinpath(
    "sample-messages.jsonl"
)
CREATE = subjects.command(Event.CONVERSATION_CREATE)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)
SEND = subjects.command(Event.MESSAGE_SEND)
SERVER_SET = ("_id", "createdAt", "createdBy")


def _samples() -> list[dict[str, Any]]:
    return [jsonutil.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sample", _samples(), ids=lambda s: str(s["case"]))
async def test_every_sample_message_is_a_valid_send(
    service: ConversationService, request_: Request, sample: dict[str, Any]
) -> None:
    msg = dict(sample["message"])
    writer = msg.get("createdBy") or "user-456"
    agent_id = msg.get("agentId") or "agent-789"
    cid = new_id("conv")
    r = await request_(
        CREATE,
        {
            "conversationId": cid,
            "title": "samples",
            "participants": [{"agentId": agent_id, "role": "agent"}],
        },
        user(writer),
    )
    assert r["success"], r
    role = msg["role"]
    principal = (
        user(writer)
        if role == "user"
        else agent(agent_id)
        if role in ("assistant", "tool")
        else service_principal()
    )
    data = {k: v for k, v in msg.items() if k not in SERVER_SET}
    data["conversationId"] = cid
    r = await request_(SEND, data, principal)
    assert r["success"], (sample["case"], r)
    stored = r["data"]
    for key, value in data.items():
        if key == "messageStatus":
            assert stored[key] == "sent"  # the stored copy is sent, whatever the client's was
        elif value is None:
            assert stored.get(key) is None, key
        else:
            assert stored[key] == value, (key, stored.get(key), value)


async def test_seed_participants_in_create_and_update(
    service: ConversationService, request_: Request
) -> None:
    r = await request_(
        CREATE,
        {
            "title": "seed shape",
            "status": "active",
            "participants": [
                {"userId": "user-2", "role": "user"},
                {"agentId": "agent-7", "role": "agent"},
                {"userId": "user-3", "role": "observer"},
                "user-4",  # the shorthand
                {"id": "user-5", "kind": "user"},  # Parley's older shape
            ],
        },
        user("user-1"),
    )
    assert r["success"], r
    conv = r["data"]
    shape = [
        ({k for k in p if k != "joinedAt"}, p.get("userId") or p.get("agentId"), p["role"])
        for p in conv["participants"]
    ]
    assert shape == [
        ({"userId", "role"}, "user-1", "user"),
        ({"userId", "role"}, "user-2", "user"),
        ({"agentId", "role"}, "agent-7", "agent"),
        ({"userId", "role"}, "user-3", "observer"),
        ({"userId", "role"}, "user-4", "user"),
        ({"userId", "role"}, "user-5", "user"),
    ]
    assert all(p["joinedAt"].endswith("Z") for p in conv["participants"])
    cid = conv["_id"]
    # The whole list, as a seed client writes it: user-3 and user-5 are gone, user-6 joins.
    keep = [p for p in conv["participants"] if p.get("userId") not in ("user-3", "user-5")]
    wanted = [{k: v for k, v in p.items() if k != "joinedAt"} for p in keep]
    wanted.append({"userId": "user-6", "role": "observer"})
    r = await request_(UPDATE, {"conversationId": cid, "participants": wanted}, user("user-1"))
    assert r["success"], r
    state = {
        (p.get("userId") or p.get("agentId")): p.get("leftAt") is None
        for p in r["data"]["participants"]
    }
    assert state == {
        "user-1": True,
        "user-2": True,
        "agent-7": True,
        "user-3": False,
        "user-4": True,
        "user-5": False,
        "user-6": True,
    }
    # removeParticipants takes the seed's objects too.
    r = await request_(
        UPDATE,
        {"conversationId": cid, "removeParticipants": [{"agentId": "agent-7"}]},
        user("user-1"),
    )
    assert r["success"], r
    left = [p for p in r["data"]["participants"] if p.get("agentId") == "agent-7"]
    assert left and left[0]["leftAt"] and left[0]["role"] == "agent"
    # Bad entries are refused with the field named.
    for bad in (
        {"userId": "u", "agentId": "a", "role": "user"},
        {"role": "user"},
        {"userId": "u", "role": "owner"},
        {"userId": "u.x", "role": "user"},
        {"userId": "u", "kind": "agent"},
    ):
        r = await request_(CREATE, {"participants": [bad]}, user("user-1"))
        assert r["error"]["code"] == "VALIDATION_ERROR", (bad, r)
        assert r["error"]["details"]["field"].startswith("participants.0"), r


async def test_message_agent_id_is_the_writers_own(
    service: ConversationService, request_: Request
) -> None:
    r = await request_(
        CREATE, {"participants": [{"agentId": "agent-7", "role": "agent"}]}, user("user-1")
    )
    cid = r["data"]["_id"]
    r = await request_(
        SEND, {"conversationId": cid, "content": "hi", "agentId": "agent-7"}, user("user-1")
    )
    assert r["error"]["code"] == "FORBIDDEN" and r["error"]["details"]["field"] == "agentId"
    r = await request_(
        SEND, {"conversationId": cid, "content": "hi", "agentId": "agent-8"}, agent("agent-7")
    )
    assert r["error"]["code"] == "FORBIDDEN" and r["error"]["details"]["field"] == "agentId"
    r = await request_(
        SEND,
        {"conversationId": cid, "content": "hi", "agentId": None, "messageStatus": "sending"},
        user("user-1"),
    )
    assert r["success"] and r["data"]["messageStatus"] == "sent" and "agentId" not in r["data"]


async def test_participant_errors_name_the_field(
    service: ConversationService, request_: Request
) -> None:
    r = await request_(CREATE, {"participants": ["bad id"]}, user("user-1"))
    assert r["error"]["details"]["field"] == "participants.0.userId", r
    r = await request_(CREATE, {"participants": [5]}, user("user-1"))
    assert r["error"]["details"]["field"] == "participants.0", r
    r = await request_(CREATE, {"participants": [{"userId": "u", "role": "boss"}]}, user("u"))
    assert r["error"]["details"]["field"] == "participants.0.role", r
