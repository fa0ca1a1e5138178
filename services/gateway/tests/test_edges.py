"""Close codes, limits, auth, drain and HTTP on real gateway processes and real NATS (resuming
a session: test_resume.py).

The conversation side is the narrow fake of conftest.py; test_acceptance.py repeats the
end-to-end scenarios against the real conversation service.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil
from parley_contract.events import PrincipalKind
from parley_contract.limits import MAX_CONTENT_CHARS
from parley_devstack.idp import rs256_key_pair
from parley_gateway.settings import Settings

from .conftest import http_get, joined_conversation, token


async def aget(url: str, tok: str | None = None) -> tuple[int, bytes, Any]:
    return await asyncio.to_thread(http_get, url, tok)


async def test_auth_is_checked_before_the_upgrade(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory()
    with pytest.raises(InvalidStatus) as exc:
        await connect(gw.ws_url)
    assert exc.value.response.status_code == 401
    assert jsonutil.loads(exc.value.response.body)["error"]["code"] == "UNAUTHORIZED"
    with pytest.raises(InvalidStatus) as exc:
        await connect(gw.ws_url + "?access_token=" + token("a", ttl_seconds=-60))
    assert exc.value.response.status_code == 401
    assert b"expired" in exc.value.response.body
    with pytest.raises(InvalidStatus) as exc:
        await connect(gw.ws_url, additional_headers={"Authorization": "Bearer x.y.z"})
    assert exc.value.response.status_code == 401
    c = await clients(gw.ws_url, "alice", header=False)  # access_token in the query
    assert c.frames[0]["event"] == "connected"


def test_hs256_refused_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared secret (HS256) only in development: even a strong one is refused in
    production, with the way out in the message (issue 18)."""
    monkeypatch.setenv("PARLEY_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match=r"HS256.*development only.*PARLEY_JWT_JWKS_URL"):
        Settings().check()
    monkeypatch.setenv("PARLEY_JWT_SECRET", "x" * 40)
    with pytest.raises(ValueError, match="HS256"):
        Settings().check()
    monkeypatch.setenv("PARLEY_JWT_ALGORITHM", "RS256")
    with pytest.raises(ValueError, match="PARLEY_JWT_PUBLIC_KEY"):
        Settings().check()
    monkeypatch.setenv("PARLEY_JWT_PUBLIC_KEY", rs256_key_pair()[1])
    Settings().check()
    monkeypatch.setenv("PARLEY_ENVIRONMENT", "development")
    monkeypatch.setenv("PARLEY_JWT_ALGORITHM", "HS256")
    Settings().check()  # development: the shared secret is fine


async def test_bad_frames_get_their_errors_and_the_connection_survives(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory()
    c = await clients(gw.ws_url, "alice")
    other = await clients(gw.ws_url, "bob")
    cid = await joined_conversation(other)

    await c.send_raw("[1, 2]")
    e = await c.wait_for(lambda f: f.get("event") == "error")
    assert e["error"]["code"] == "VALIDATION_ERROR" and "object" in e["error"]["message"]

    r = await c.cmd("message:send", {"conversationId": cid})
    assert r["success"] is False and r["error"]["code"] == "FORBIDDEN"  # not a participant
    r = await c.cmd("message:send", {"content": "x"})
    assert r["error"]["code"] == "VALIDATION_ERROR"
    assert r["error"]["details"]["field"] == "conversationId"
    r = await c.cmd("message:send", {"conversationId": 42, "content": "x"})
    assert r["error"]["code"] == "VALIDATION_ERROR"
    r = await c.cmd("message:send", {"conversationId": "a.b>", "content": "x"})
    assert r["error"]["code"] == "VALIDATION_ERROR"
    other_cmd = await other.cmd(
        "message:send", {"conversationId": cid, "content": "x" * (MAX_CONTENT_CHARS + 1)}
    )
    assert other_cmd["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert other_cmd["error"]["details"] == {"field": "content", "limit": MAX_CONTENT_CHARS}
    r = await c.cmd("conversation:join", {"conversationId": cid})
    assert r["error"]["code"] == "FORBIDDEN"
    r = await c.cmd("tool:call", {"toolName": "x"})
    assert r["error"]["code"] == "FORBIDDEN"  # users may not call tools
    r = await c.cmd("message:send", "not an object")
    assert r["error"]["code"] == "VALIDATION_ERROR"
    await c.send_raw(jsonutil.dumps({"event": "message:send", "id": 5.5}).decode())
    e = await c.wait_for(lambda f: f.get("event") == "error" and f["error"].get("details"))
    assert e["error"]["details"]["field"] == "id"
    await c.send_raw(jsonutil.dumps({"event": "what:ever"}).decode())
    await c.wait_for(lambda f: f.get("error", {}).get("code") == "UNKNOWN_EVENT")

    def unknown() -> int:
        return sum(f.get("error", {}).get("code") == "UNKNOWN_EVENT" for f in c.frames)

    for hostile in ([], {"typing:start": 1}, ["typing:start"]):  # unhashable event names
        n = unknown()
        await c.send_raw(jsonutil.dumps({"event": hostile, "data": {}}).decode())
        await c.wait_for(lambda f, n=n: unknown() > n)
    # still alive, and nobody else noticed anything
    r = await c.cmd("presence:online", {"status": "here"})
    assert r["success"]
    assert [f["event"] for f in other.frames if f.get("event") == "error"] == []


async def test_frame_over_the_limit_closes_1009(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_MAX_FRAME_BYTES": "2048"})
    c = await clients(gw.ws_url, "alice")
    assert c.frames[0]["data"]["limits"]["maxFrameBytes"] == 2048
    await c.send_raw("x" * 5000)
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.ws.close_code == 1009


async def test_max_conversations(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_MAX_CONVERSATIONS": "1"})
    c = await clients(gw.ws_url, "alice")
    await joined_conversation(c)
    r = await c.cmd("conversation:create", {})
    r = await c.cmd("conversation:join", {"conversationId": r["data"]["_id"]})
    assert r["error"]["code"] == "RATE_LIMITED"


async def test_heartbeat_timeout_closes_4408(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_HEARTBEAT_SECONDS": "0.5"})
    c = await clients(gw.ws_url, "alice")
    assert c.frames[0]["data"]["heartbeatSeconds"] == 0.5
    c.ws.transport.pause_reading()  # pings go unanswered
    await asyncio.sleep(1.6)
    c.ws.transport.resume_reading()
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.ws.close_code == 4408


async def test_answering_pings_keeps_the_connection(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_HEARTBEAT_SECONDS": "0.3"})
    c = await clients(gw.ws_url, "alice")
    await asyncio.sleep(1.2)
    assert not c.closed.is_set()


async def test_token_expiry_closes_4401(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_HEARTBEAT_SECONDS": "0.5"})
    c = await clients(gw.ws_url, "alice", tok=token("alice", ttl_seconds=1))
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.ws.close_code == 4401


async def test_slow_reader_is_cut_off_alone(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_SEND_QUEUE_LIMIT": "2097152"})
    fast = await clients(gw.ws_url, "alice")
    slow = await clients(gw.ws_url, "bob")
    cid = await joined_conversation(fast, "bob")
    r = await slow.cmd("conversation:join", {"conversationId": cid})
    assert r["success"]
    slow.ws.transport.pause_reading()
    from parley_contract import envelopes, subjects
    from parley_contract.events import Event

    blob = "y" * 900_000
    n = 30
    for i in range(n):
        frame = envelopes.event_frame(
            Event.MESSAGE_STREAM_DELTA, {"i": i, "delta": blob}, conversation_id=cid
        )
        await fake_conversation.nc.publish(subjects.conversation_events(cid), jsonutil.dumps(frame))
        await fake_conversation.nc.flush()
        await asyncio.sleep(0.03)  # readers that read keep up; the paused one cannot
    await fast.wait_for(lambda f: f.get("data", {}).get("i") == n - 1, timeout=30)
    assert len(fast.events("message:stream-delta")) == n
    slow.ws.transport.resume_reading()
    await asyncio.wait_for(slow.closed.wait(), 30)
    assert slow.ws.close_code == 1013
    assert len(slow.events("message:stream-delta")) < n
    # the fast one is still served
    r = await fast.cmd("message:send", {"conversationId": cid, "content": "still here"})
    assert r["success"]
    _, body, _ = await aget(gw.http + "/metrics")
    assert b"parley_gateway_slow_consumers_total 1.0" in body


async def test_http_surface(
    gateway_factory: Any, fake_conversation: Any, clients: Any, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<html>parley ui</html>")
    (tmp_path / "app.js").write_text("console.log(1)")
    gw = gateway_factory({"PARLEY_GATEWAY_WEB_DIST": str(tmp_path)})
    tok = token("alice")
    status, body, _ = await aget(gw.http + "/v1/conversations?status=active&limit=5", tok)
    assert status == 200, body
    doc = jsonutil.loads(body)
    assert doc["success"] and doc["data"]["q"] == {"status": "active", "limit": 5}
    status, body, _ = await aget(gw.http + "/v1/conversations?status=&cursor=&limit=", tok)
    assert status == 200 and jsonutil.loads(body)["data"]["q"] == {}  # empty = not given
    status, body, _ = await aget(gw.http + "/v1/conversations")
    assert status == 401 and jsonutil.loads(body)["error"]["code"] == "UNAUTHORIZED"
    status, body, _ = await aget(gw.http + "/v1/conversations/nope", tok)
    assert status == 403  # the fake's FORBIDDEN for unknown conversations
    status, body, _ = await aget(gw.http + "/v1/conversations/c1/messages?afterSeq=-1", tok)
    assert status == 422 and jsonutil.loads(body)["error"]["code"] == "VALIDATION_ERROR"
    status, body, _ = await aget(gw.http + "/v1/conversations?limit=5000", tok)
    assert status == 422
    status, body, headers = await aget(gw.http + "/docs")
    assert status == 200 and b"swagger" in body.lower()
    status, body, _ = await aget(gw.http + "/openapi.json")
    assert status == 200 and b"/v1/conversations/{conversation_id}/messages" in body
    status, body, _ = await aget(gw.http + "/")
    assert status == 200 and b"parley ui" in body
    status, body, headers = await aget(gw.http + "/app.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    status, body, _ = await aget(gw.http + "/no/such/thing")
    assert status == 404 and jsonutil.loads(body)["error"]["code"] == "NOT_FOUND"
    status, _, _ = await aget(gw.http + "/healthz")
    assert status == 200
    status, body, _ = await aget(gw.http + "/metrics")
    assert b"parley_gateway_connections" in body

    await clients(gw.ws_url, "alice")
    await clients(gw.ws_url, "bot-1", PrincipalKind.AGENT)
    status, body, _ = await aget(gw.http + "/v1/scaling", tok)
    data = jsonutil.loads(body)["data"]
    assert data["users"] >= 1 and data["agents"] >= 1 and data["instances"] >= 1
    assert set(data) == {"users", "agents", "instances", "avgUsersPerInstance"}


async def test_sigterm_readiness_fails_at_once_and_upgrades_are_refused(
    gateway_factory: Any, clients: Any
) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_DRAIN_SECONDS": "3"})
    a = await clients(gw.ws_url, "alice")
    b = await clients(gw.ws_url, "bob")
    gw.proc.signal(signal.SIGTERM)
    status = 200
    for _ in range(50):
        status, body, _ = await aget(gw.http + "/readyz")
        if status == 503:
            break
        await asyncio.sleep(0.02)
    assert status == 503 and b"draining" in body
    with pytest.raises(InvalidStatus) as exc:
        await connect(gw.ws_url + "?access_token=" + token("carol"))
    assert exc.value.response.status_code == 503
    for c in (a, b):
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.ws.close_code == 1001
    assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0


async def test_a_long_history_replay_waits_for_the_reader_instead_of_1013(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory(
        {"PARLEY_GATEWAY_SEND_QUEUE_LIMIT": "65536", "PARLEY_GATEWAY_COMMANDS_PER_SECOND": "1000"}
    )
    alice = await clients(gw.ws_url, "alice")
    r = await alice.cmd("conversation:create", {"participants": ["bob"]})
    cid = r["data"]["_id"]
    n = 150
    for i in range(n):
        r = await alice.cmd("message:send", {"conversationId": cid, "content": f"{i:03d}" * 10_000})
        assert r["success"]
    bob = await clients(gw.ws_url, "bob")
    r = await bob.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0}, timeout=60)
    assert r["success"], r
    assert bob.seqs(cid) == list(range(1, n + 1))
    assert not bob.closed.is_set()


async def test_a_crashed_instances_clients_go_offline(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    from parley_contract import subjects

    env = {"PARLEY_GATEWAY_PRESENCE_TTL_SECONDS": "3"}
    gw1 = gateway_factory(env)
    gw2 = gateway_factory(env)
    alice = await clients(gw1.ws_url, "alice")
    bob = await clients(gw2.ws_url, "bob")
    cid = await joined_conversation(alice, "bob")
    assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
    await asyncio.sleep(1.5)  # sessions saved, gw2 has seen gw1's heartbeat
    gw1.proc.kill()
    # What the bucket TTL does after PARLEY_GATEWAY_PRESENCE_TTL_SECONDS without heartbeats
    # (the shared test bucket was created with a longer TTL, so expire it by hand):
    kv = await fake_conversation.nc.jetstream().key_value(subjects.KV_INSTANCES)
    await kv.delete(gw1.name)
    off = await bob.wait_for(
        lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == "alice",
        timeout=15,
    )
    assert off["conversationId"] == cid and off["data"]["reason"] == "instance-lost"
