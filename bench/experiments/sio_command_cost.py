"""What one client command costs the gateway's transport layer through ``/socket.io/``
against ``/ws``: ``python -m bench.experiments.sio_command_cost``.

A ``/ws`` text frame is parsed into the command (``Commands.submit``); a Socket.IO client's
``42["typing:start",{...}]`` packet goes through the Engine.IO and Socket.IO layers first
(``SocketLayer.on_packet``). Both end in ``submit_frame``, the shared command path, which is
stubbed here: this times only what the transports add, on the gateway's own classes, without
I/O. Prints CPU microseconds per command, alternated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_gateway.commands import Commands
from parley_gateway.conn import Conn
from parley_gateway.metrics import Metrics
from parley_gateway.sio.packets import SocketLayer
from parley_gateway.sio.session import EioSession, SioConn

COMMANDS = 200_000
CID = "conv_0123456789abcdefghij"
WS_TEXT = '{"event":"typing:start","data":{"conversationId":"' + CID + '"}}'
SIO_TEXT = '42["typing:start",{"conversationId":"' + CID + '"}]'


class _Protocol:
    state = State.OPEN


class _Ws:
    protocol = _Protocol()
    transport = None


class _Owner:
    def ended(self, eio: EioSession) -> None:
        return None


class _Sink:
    """Stands in for the gateway: counts the commands that reach the shared path."""

    def __init__(self) -> None:
        self.n = 0

    async def submit_frame(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        self.n += 1


class _WsPath(Commands):
    def __init__(self, sink: _Sink) -> None:
        self.sink = sink

    async def submit_frame(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        await self.sink.submit_frame(conn, frame, start)


class _SioPath(SocketLayer):
    def __init__(self, sink: _Sink) -> None:
        self.gw = cast(Any, sink)


async def _run(kind: str) -> float:
    metrics = Metrics()
    principal = Principal(id="u1", kind=PrincipalKind.USER)
    ws = cast(ServerConnection, _Ws())
    sink = _Sink()
    if kind == "ws":
        conn = Conn(ws, principal, 1e12, "s1", rate=1e9, send_limit=1 << 30, metrics=metrics)
        path = _WsPath(sink)
        start = time.process_time()
        for _ in range(COMMANDS):
            await path.submit(conn, WS_TEXT)
    else:
        eio = EioSession(_Owner(), "sid1", 1 << 30, None)
        eio.ws = ws
        eio.conn = SioConn(
            eio, principal, 1e12, "s1", rate=1e9, send_limit=1 << 30, metrics=metrics
        )
        layer = _SioPath(sink)
        start = time.process_time()
        for _ in range(COMMANDS):
            await layer.on_packet(eio, SIO_TEXT)
    elapsed = time.process_time() - start
    assert sink.n == COMMANDS, (kind, sink.n)
    return elapsed / COMMANDS * 1e6


async def main() -> None:
    for kind in ("ws", "socketio", "ws", "socketio"):
        per = await _run(kind)
        print(f"{kind:9s} {per:.2f} µs per command (transport layer only)")  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
