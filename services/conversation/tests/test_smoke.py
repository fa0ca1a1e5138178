from __future__ import annotations

from parley_contract import subjects
from parley_contract.events import Event


async def test_create_and_send(service, request_) -> None:  # type: ignore[no-untyped-def]
    r = await request_(subjects.command(Event.CONVERSATION_CREATE), {"title": "hi", "participants": ["u-bob"]})
    assert r["success"], r
    cid = r["data"]["_id"]
    assert r["data"]["lastSeq"] == 1
    r = await request_(subjects.command(Event.MESSAGE_SEND), {"conversationId": cid, "content": "hello", "clientMessageId": "c1"})
    assert r["success"], r
    assert r["data"]["seq"] == 2
    print(r)
    r = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=__import__("orjson").dumps({"principal": {"id": "u-alice", "kind": "user"}, "conversationId": cid, "afterSeq": 0}))
    print(r)
    assert [f["seq"] for f in r["data"]["events"]] == [1, 2]
