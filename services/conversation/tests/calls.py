"""What the service tests send, as a gateway would: the command subjects, the principals
(users, an agent) and the calls they share (test_service.py, test_access.py, test_history.py)."""

from __future__ import annotations

from typing import Any

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .conftest import Request, agent, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
JOIN = subjects.command(Event.CONVERSATION_JOIN)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)
SEND = subjects.command(Event.MESSAGE_SEND)
EDIT = subjects.command(Event.MESSAGE_EDIT)
DELETE = subjects.command(Event.MESSAGE_DELETE)
REACT = subjects.command(Event.MESSAGE_REACT)
STOP = subjects.command(Event.MESSAGE_STOP)
TASK = subjects.command(Event.TASK_CREATE)

ALICE = user("u-alice")
BOB = user("u-bob")
MALLORY = user("u-mallory")
AGENT = agent("agent-general")


async def create(request_: Request, **data: Any) -> dict[str, Any]:
    data.setdefault("participants", ["u-bob"])
    r = await request_(CREATE, data, ALICE)
    assert r["success"], r
    conv: dict[str, Any] = r["data"]
    return conv


async def list_all(request_: Request, cid: str) -> list[dict[str, Any]]:
    r = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 100})
    assert r["success"], r
    items: list[dict[str, Any]] = r["data"]["items"]
    return items


async def events_since(
    request_: Request, cid: str, after: int = 0, principal: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {
        "principal": principal or ALICE,
        "conversationId": cid,
        "afterSeq": after,
        "limit": 1000,
    }
    return await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))


def handled(svc: ConversationService, op: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "parley_conversation_requests_total", {"operation": op, "outcome": "ok"}
    )
    return value or 0.0
