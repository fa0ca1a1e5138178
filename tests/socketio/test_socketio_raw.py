"""Hostile Engine.IO / Socket.IO packets on /socket.io/ (a raw WebSocket, no library).

Every bad packet gets a clear answer (``connect_error`` before CONNECT, an ``error`` event
after it) and the connection goes on serving.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.stack import Stack


def _url(stack: Stack, query: str = "EIO=4&transport=websocket") -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].http_port}/socket.io/?{query}"


async def _next_message(ws: ClientConnection) -> str:
    while True:
        msg = await ws.recv()
        assert isinstance(msg, str)
        if msg != "2":
            return msg
        await ws.send("3")


async def test_bad_packets_get_clear_errors(sio_stack: Stack) -> None:
    async with connect(_url(sio_stack)) as ws:
        opened = await ws.recv()
        assert isinstance(opened, str) and opened.startswith("0")
        assert jsonutil.loads(opened[1:])["upgrades"] == []
        # before CONNECT: an event is refused with a connect_error
        await ws.send('42["message:send",{}]')
        msg = await _next_message(ws)
        assert msg.startswith("44") and jsonutil.loads(msg[2:])["data"]["code"] == "UNAUTHORIZED"
        for bad in ("4x", "9", '42["a",', "451-[]"):
            await ws.send(bad)
            msg = await _next_message(ws)
            assert msg.startswith("44"), (bad, msg)
            assert jsonutil.loads(msg[2:])["data"]["code"] == "VALIDATION_ERROR"
        tok = mint_token(f"u-{uuid.uuid4().hex[:6]}", PrincipalKind.USER, name="U")
        await ws.send("40" + jsonutil.dumps({"token": tok}).decode())
        msg = await _next_message(ws)
        assert msg.startswith("40") and {"sid", "pid"} <= set(jsonutil.loads(msg[2:]))
        hello = await _next_message(ws)
        assert hello.startswith('42["connected"')
        for bad, code in (
            ("42[]", "VALIDATION_ERROR"),
            ("42[1,2]", "VALIDATION_ERROR"),
            ('42{"event":"x"}', "VALIDATION_ERROR"),
            ('42["no:such",{}]', "UNKNOWN_EVENT"),
            ('42["a",', "VALIDATION_ERROR"),
            ("4", "VALIDATION_ERROR"),
            ('42/admin,["presence:online",{}]', "VALIDATION_ERROR"),
            ("40", "VALIDATION_ERROR"),  # already connected
        ):
            await ws.send(bad)
            msg = await _next_message(ws)
            assert msg.startswith('42["error"'), (bad, msg)
            assert jsonutil.loads(msg[2:])[1]["error"]["code"] == code, (bad, msg)
        # the binary packet refused before CONNECT announced one attachment: dropped quietly;
        # a binary frame nobody announced is refused
        await ws.send(b"\x00attachment")
        await ws.send(b"\x00binary")
        msg = await _next_message(ws)
        assert "binary" in jsonutil.loads(msg[2:])[1]["error"]["message"]
        # after all this, a good command still works
        await ws.send('427["presence:online",{}]')
        msg = await _next_message(ws)
        assert msg.startswith("437[") and jsonutil.loads(msg[3:])[0]["success"] is True


async def test_bad_handshakes(sio_stack: Stack) -> None:
    for query, status in (
        ("EIO=3&transport=websocket", 400),
        ("EIO=4&transport=carrier-pigeon", 400),
        ("EIO=4&transport=websocket&sid=nope", 400),
    ):
        try:
            async with connect(_url(sio_stack, query)):
                raise AssertionError(f"{query} accepted")
        except InvalidStatus as exc:
            assert exc.response.status_code == status, query


async def test_the_recovery_offset_names_every_conversation(sio_stack: Stack) -> None:
    """Issue 14: the offset socket.io-client keeps (the last event's) covers all of the
    socket's conversations, and a recovery resumes each of them from it: the entry of the
    conversation that did not send the last event is used (its last message comes again
    when the offset says it was not received)."""
    user = f"u-{uuid.uuid4().hex[:6]}"
    tok = mint_token(user, PrincipalKind.USER, name="U")
    acks = iter(range(1, 1000))

    seen: list[str] = []  # event packets read while waiting for an ack

    async def call(ws: ClientConnection, event: str, data: dict[str, object]) -> object:
        n = next(acks)
        await ws.send(f"42{n}" + jsonutil.dumps([event, data]).decode())
        while True:
            msg = await _next_message(ws)
            if msg.startswith(f"43{n}["):
                env = jsonutil.loads(msg[len(f"43{n}") :])[0]
                assert env["success"], env
                return env["data"]
            seen.append(msg)

    async def until_event(ws: ClientConnection, event: str) -> list[object]:
        while True:
            msg = seen.pop(0) if seen else await _next_message(ws)
            if msg.startswith(f'42["{event}"'):
                args: list[object] = jsonutil.loads(msg[2:])
                return args

    async with connect(_url(sio_stack)) as ws:
        await ws.recv()
        await ws.send("40" + jsonutil.dumps({"token": tok}).decode())
        pid = jsonutil.loads((await _next_message(ws))[2:])["pid"]
        cids = []
        for title in ("a", "b"):
            conv = await call(ws, "conversation:create", {"title": title, "participants": []})
            assert isinstance(conv, dict)
            cids.append(conv["_id"])
            await call(ws, "conversation:join", {"conversationId": conv["_id"]})
        a, b = cids
        seqs = {}
        for cid in (b, a):  # the last event is a's
            await call(ws, "message:send", {"conversationId": cid, "content": f"in {cid}"})
            args = await until_event(ws, "message:new")
            seqs[cid] = args[1]["seq"]  # type: ignore[index]
        offset = args[2]
        assert isinstance(offset, str)
        assert dict(p.rsplit(":", 1) for p in offset.split(",")) == {
            a: str(seqs[a]),
            b: str(seqs[b]),
        }
    # Recover saying b's last message was not received: it comes again, a's does not.
    behind = offset.replace(f"{b}:{seqs[b]}", f"{b}:{seqs[b] - 1}")
    seen.clear()
    async with connect(_url(sio_stack)) as ws:
        await ws.recv()
        await ws.send("40" + jsonutil.dumps({"token": tok, "pid": pid, "offset": behind}).decode())
        assert jsonutil.loads((await _next_message(ws))[2:])["pid"] == pid
        hello = await until_event(ws, "reconnected")
        listed = {c["conversationId"]: c["lastSeq"] for c in hello[1]["data"]["conversations"]}  # type: ignore[index]
        assert listed == {a: seqs[a], b: seqs[b] - 1}, listed
        again = await until_event(ws, "message:new")
        assert again[1]["conversationId"] == b and again[1]["seq"] == seqs[b], again  # type: ignore[index]


async def test_a_burst_of_sends_is_batched_and_acked_in_order(sio_stack: Stack) -> None:
    """Socket.IO takes the gateway's command path: sends emitted without waiting for their
    acks are stored in the order emitted, the ones queued behind the first as one request
    (parley_gateway.chains), each acked with its own ack id."""
    tok = mint_token(f"u-{uuid.uuid4().hex[:6]}", PrincipalKind.USER, name="U")
    async with connect(_url(sio_stack)) as ws:
        await ws.recv()
        await ws.send("40" + jsonutil.dumps({"token": tok}).decode())
        await _next_message(ws)  # CONNECT's answer
        await ws.send("421" + jsonutil.dumps(["conversation:create", {"title": "b"}]).decode())
        while not (msg := await _next_message(ws)).startswith("431["):
            pass
        cid = jsonutil.loads(msg[3:])[0]["data"]["_id"]
        for n in range(2, 22):
            data = {"conversationId": cid, "content": f"m{n}"}
            await ws.send(f"42{n}" + jsonutil.dumps(["message:send", data]).decode())
        acks: list[tuple[int, dict[str, object]]] = []
        while len(acks) < 20:
            msg = await _next_message(ws)
            if msg.startswith("43"):
                n = int(msg[2 : msg.index("[")])
                acks.append((n, jsonutil.loads(msg[msg.index("[") :])[0]))
    assert [n for n, _ in acks] == list(range(2, 22))  # acked in the order emitted
    assert all(env["success"] for _, env in acks), acks
    datas = [env["data"] for _, env in acks]
    seqs = [d["seq"] for d in datas]  # type: ignore[index]
    assert seqs == list(range(seqs[0], seqs[0] + 20))
    assert [d["content"] for d in datas] == [f"m{n}" for n in range(2, 22)]  # type: ignore[index]
    metrics = f"http://127.0.0.1:{sio_stack.gateways[0].http_port}/metrics"
    text = (await asyncio.to_thread(_get, metrics)).decode()
    count = [
        ln for ln in text.splitlines() if ln.startswith("parley_gateway_send_batch_messages_count")
    ]
    assert count and float(count[0].rsplit(" ", 1)[1]) >= 1, count


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
        return body
