"""Hostile Engine.IO / Socket.IO packets on /socket.io/ (a raw WebSocket, no library).

Every bad packet gets a clear answer (``connect_error`` before CONNECT, an ``error`` event
after it) and the connection goes on serving.
"""

from __future__ import annotations

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
