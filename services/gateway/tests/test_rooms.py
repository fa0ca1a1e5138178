"""Issue 13: room semantics on real processes (two gateways, the conversation service, an
agent bridge with the demo agent, NATS, the store).

- conversation:join / conversation:leave are watching, not membership; quitting is
  conversation:update removing oneself;
- command ids are any string of 1-128 characters or any integer, echoed exactly;
- typing goes to everyone in the conversation but the sending connection.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

from parley_contract import jsonutil
from parley_devstack.stack import Stack

from .conftest import http_get, token, uid


async def aget(url: str, tok: str) -> tuple[int, Any]:
    status, body, _ = await asyncio.to_thread(http_get, url, tok)
    return status, jsonutil.loads(body)


def _http_delete(url: str, tok: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method="DELETE")
    req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def adelete(url: str, tok: str) -> tuple[int, Any]:
    status, body = await asyncio.to_thread(_http_delete, url, tok)
    return status, jsonutil.loads(body)


async def _create(client: Any, **data: Any) -> str:
    r = await client.cmd("conversation:create", {"title": "t", **data})
    assert r["success"], r
    cid: str = r["data"]["_id"]
    return cid


async def test_leave_is_watching_and_quitting_is_explicit(stack: Stack, clients: Any) -> None:
    ada, bob = uid("ada"), uid("bob")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(1), bob)
    first = await _create(a, participants=[bob])
    second = await _create(a, participants=[bob])
    for c in (a, b):
        assert (await c.cmd("conversation:join", {"conversationId": first}))["success"]
    # Ada opens the other conversation (the web page leaves the one it showed).
    r = await a.cmd("conversation:leave", {"conversationId": first})
    assert r["success"], r
    assert (await a.cmd("conversation:join", {"conversationId": second}))["success"]
    # Still a participant: she may write there, it is listed, and she can come back.
    r = await a.cmd("message:send", {"conversationId": first, "content": "still here"})
    assert r["success"], r
    sent_seq = r["data"]["seq"]
    status, body = await aget(f"{stack.gateway_url(0)}/v1/conversations", token(ada))
    assert status == 200 and first in [c["_id"] for c in body["data"]["items"]]
    status, body = await aget(f"{stack.gateway_url(0)}/v1/conversations/{first}", token(ada))
    me = [p for p in body["data"]["participants"] if p.get("userId") == ada]
    assert me and all(p.get("leftAt") is None for p in me), me
    # Leaving stopped the live feed of this connection only.
    await b.wait_for(lambda f: f.get("event") == "message:new" and f.get("seq") == sent_seq)
    await asyncio.sleep(0.3)
    assert not [f for f in a.events("message:new", first)], "left: no more live events"
    # Nobody was told that Ada quit.
    assert not b.events("conversation:updated", first)
    r = await a.cmd("conversation:join", {"conversationId": first, "sinceSeq": 0})
    assert r["success"], r
    await a.wait_for(lambda f: f.get("event") == "message:new" and f.get("seq") == sent_seq)

    # Quitting is explicit: conversation:update removing oneself (any participant may).
    r = await b.cmd("conversation:update", {"conversationId": first, "removeParticipants": [bob]})
    assert r["success"], r
    gone = [p for p in r["data"]["participants"] if p.get("userId") == bob]
    assert gone and all(p.get("leftAt") for p in gone)
    r = await b.cmd("message:send", {"conversationId": first, "content": "no"})
    assert r["error"]["code"] == "FORBIDDEN"
    status, body = await aget(f"{stack.gateway_url(1)}/v1/conversations", token(bob))
    assert first not in [c["_id"] for c in body["data"]["items"]]
    assert second in [c["_id"] for c in body["data"]["items"]]


async def test_command_ids_are_strings_or_integers_echoed_exactly(
    stack: Stack, clients: Any
) -> None:
    c = await clients(stack.ws_url(0), uid("ida"))

    async def send(frame: dict[str, Any]) -> None:
        await c.send_raw(jsonutil.dumps(frame).decode())

    await send({"event": "presence:online", "id": 5})
    r = await c.wait_for(lambda f: f.get("id") == 5 and "success" in f)
    assert r["success"] and type(r["id"]) is int and r["event"] == "presence:online"
    await send({"event": "presence:online", "id": 0})
    assert (await c.wait_for(lambda f: f.get("id") == 0 and "success" in f))["success"]
    await send({"event": "presence:online", "id": -7})
    assert (await c.wait_for(lambda f: f.get("id") == -7 and "success" in f))["success"]
    big = 2**62 + 1
    await send({"event": "presence:online", "id": big})
    assert (await c.wait_for(lambda f: f.get("id") == big and "success" in f))["success"]
    odd = "é \U0001f600 x" * 10  # any string of 1-128 characters
    await send({"event": "presence:online", "id": odd})
    assert (await c.wait_for(lambda f: f.get("id") == odd and "success" in f))["success"]
    # Errors of a command carry its id too.
    await send({"event": "message:send", "id": 42, "data": {"conversationId": "conv-nope"}})
    r = await c.wait_for(lambda f: f.get("id") == 42 and "success" in f)
    assert not r["success"] and r["error"]["code"] in ("VALIDATION_ERROR", "FORBIDDEN")
    await send({"event": "no:such", "id": 43})
    r = await c.wait_for(lambda f: f.get("id") == 43 and "success" in f)
    assert r["error"]["code"] == "UNKNOWN_EVENT"
    # Not an id: booleans, floats, objects, empty or over-long strings.
    bads: list[Any] = [True, 1.5, {"a": 1}, [], "", "x" * 129]
    for bad in bads:
        before = len(c.events("error"))
        await send({"event": "presence:online", "id": bad})
        await c.wait_for(lambda f, n=before: len(c.events("error")) > n)
        err = c.events("error")[-1]
        assert err["error"]["code"] == "VALIDATION_ERROR" and err["error"]["details"] == {
            "field": "id"
        }


async def test_typing_reaches_everyone_but_the_sending_connection(
    stack: Stack, clients: Any
) -> None:
    ada, bob = uid("ada"), uid("bob")
    a1 = await clients(stack.ws_url(0), ada)
    a2 = await clients(stack.ws_url(0), ada)  # Ada's second tab, same instance
    a3 = await clients(stack.ws_url(1), ada)  # and a third on the other instance
    b = await clients(stack.ws_url(1), bob)
    cid = await _create(a1, participants=[bob])
    for c in (a1, a2, a3, b):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await a1.cmd("typing:start", {"conversationId": cid})
    assert r["success"], r
    for c in (a2, a3, b):
        t = await c.wait_for(lambda f: f.get("event") == "typing:start")
        assert t["data"]["principalId"] == ada and "seq" not in t
    # Something a1 does receive afterwards proves the typing frame had its chance to arrive.
    await b.cmd("typing:stop", {"conversationId": cid})
    await a1.wait_for(lambda f: f.get("event") == "typing:stop")
    assert not a1.events("typing:start"), "the sender got its own typing:start back"
    assert not b.events("typing:stop"), "the sender got its own typing:stop back"


async def test_the_seeds_participant_shape_through_the_gateway(stack: Stack, clients: Any) -> None:
    ada, bob = uid("ada"), uid("bob")
    a = await clients(stack.ws_url(0), ada)
    r = await a.cmd(
        "conversation:create", {"title": "t", "participants": [{"userId": bob, "role": "user"}]}
    )
    assert r["success"], r
    cid = r["data"]["_id"]
    got = [(p.get("userId"), p["role"], "joinedAt" in p) for p in r["data"]["participants"]]
    assert got == [(ada, "user", True), (bob, "user", True)]
    status, body = await aget(f"{stack.gateway_url(1)}/v1/conversations/{cid}", token(bob))
    # GET adds the display names the directory knows (protocol 3.6): Ada created it.
    listed = body["data"]["participants"]
    assert [p.get("name") for p in listed] == [ada.title(), None]
    unnamed = [{k: v for k, v in p.items() if k != "name"} for p in listed]
    assert status == 200 and unnamed == r["data"]["participants"]


async def test_delete_a_conversation(stack: Stack, clients: Any) -> None:
    ada, bob = uid("ada"), uid("bob")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(1), bob)
    b_elsewhere = await clients(stack.ws_url(0), bob)  # connected, not watching it
    cid = await _create(a, participants=[bob])
    other = await _create(a, participants=[bob])
    for c in (a, b):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    assert (await a.cmd("message:send", {"conversationId": cid, "content": "hi"}))["success"]
    # Only its creator may delete it.
    r = await b.cmd("conversation:delete", {"conversationId": cid})
    assert r["error"]["code"] == "FORBIDDEN", r
    r = await a.cmd("conversation:delete", {"conversationId": cid})
    assert r["success"], r
    assert r["data"]["isActive"] is False and r["data"]["deletedAt"]
    # The durable conversation:deleted reaches its members, joined or not.
    for c in (a, b, b_elsewhere):
        f = await c.wait_for(lambda f: f.get("event") == "conversation:deleted")
        assert f["conversationId"] == cid and isinstance(f["seq"], int)
        assert f["data"]["_id"] == cid and f["data"]["isActive"] is False
    # Gone for everyone: writes, joins and reads answer NOT_FOUND, lists skip it.
    for c in (a, b):
        r = await c.cmd("message:send", {"conversationId": cid, "content": "still?"})
        assert r["error"]["code"] == "NOT_FOUND", r
        r = await c.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
        assert r["error"]["code"] == "NOT_FOUND", r
    r = await a.cmd("conversation:delete", {"conversationId": cid})
    assert r["error"]["code"] == "NOT_FOUND", r
    for who, gw in ((ada, 0), (bob, 1)):
        status, body = await aget(f"{stack.gateway_url(gw)}/v1/conversations", token(who))
        ids = [c["_id"] for c in body["data"]["items"]]
        assert status == 200 and cid not in ids and other in ids
        status, body = await aget(f"{stack.gateway_url(gw)}/v1/conversations/{cid}", token(who))
        assert status == 404 and body["error"]["code"] == "NOT_FOUND"
        status, body = await aget(
            f"{stack.gateway_url(gw)}/v1/conversations/{cid}/messages", token(who)
        )
        assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    # An outsider still learns nothing (same answer as for a conversation that never was).
    status, body = await aget(f"{stack.gateway_url(0)}/v1/conversations/{cid}", token(uid("eve")))
    assert status == 403


async def test_delete_over_http(stack: Stack, clients: Any) -> None:
    ada, bob = uid("ada"), uid("bob")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(1), bob)
    cid = await _create(a, participants=[bob])
    assert (await b.cmd("conversation:join", {"conversationId": cid}))["success"]
    url = f"{stack.gateway_url(1)}/v1/conversations/{cid}"
    status, body = await adelete(url, token(bob))
    assert status == 403 and body["error"]["code"] == "FORBIDDEN", body
    status, body = await adelete(url, token(ada))
    assert status == 200 and body["data"]["isActive"] is False and body["data"]["deletedAt"]
    f = await b.wait_for(lambda f: f.get("event") == "conversation:deleted")
    assert f["conversationId"] == cid
    status, body = await adelete(url, token(ada))
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = await aget(url, token(bob))
    assert status == 404
