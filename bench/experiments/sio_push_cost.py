"""What one delivery costs the gateway through ``/socket.io/`` against ``/ws``:
``python -m bench.experiments.sio_push_cost``.

The hub hands every member of a conversation the same framed event (``conn.push_frame``).
For a ``/ws`` connection that is an append to websockets' outgoing list; a Socket.IO
connection (``SioConn``) first turns the frame into its packet, made once per event for all
receivers and remembered (``session._Translation``). This times both on the gateway's own
classes with a stand-in socket (no I/O: the socket write per connection per tick is the same
for both and is measured by ``write_coalescing``): a typing event pushed to 20 members,
repeated. Prints CPU microseconds per delivery and per event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from parley_contract import envelopes, jsonutil
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_gateway import conn as conn_module
from parley_gateway.conn import Conn, frame_text
from parley_gateway.metrics import Metrics
from parley_gateway.sio.session import EioSession, SioConn

MEMBERS = 20
EVENTS = 20_000
ROUNDS = 5


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        return None


class _Protocol:
    def __init__(self) -> None:
        self.state = State.OPEN
        self.writes: list[bytes] = []

    def data_to_send(self) -> list[bytes]:
        out, self.writes = self.writes, []
        return out


class _Ws:
    def __init__(self) -> None:
        self.protocol = _Protocol()
        self.transport = _Transport()


class _Owner:
    def ended(self, eio: EioSession) -> None:
        return None


def _conns(kind: str, metrics: Metrics) -> list[Conn]:
    out: list[Conn] = []
    for i in range(MEMBERS):
        ws = cast(ServerConnection, _Ws())
        principal = Principal(id=f"u{i}", kind=PrincipalKind.USER)
        if kind == "ws":
            out.append(
                Conn(ws, principal, 1e12, f"s{i}", rate=1e9, send_limit=1 << 30, metrics=metrics)
            )
        else:
            eio = EioSession(_Owner(), f"sid{i}", 1 << 30, None)
            eio.ws = ws
            out.append(
                SioConn(
                    eio, principal, 1e12, f"s{i}", rate=1e9, send_limit=1 << 30, metrics=metrics
                )
            )
    return out


def _run(kind: str) -> tuple[float, int]:
    metrics = Metrics()
    conns = _conns(kind, metrics)
    frame: dict[str, Any] = envelopes.event_frame(
        Event.TYPING_START,
        {"conversationId": "conv-1", "principalId": "u0", "kind": "user", "name": "U0"},
        conversation_id="conv-1",
    )
    payload = jsonutil.dumps(frame)
    start = time.process_time()
    for _ in range(EVENTS):
        wire = frame_text(payload)  # the hub frames each event once
        for c in conns:
            c.push_frame(wire)
        conn_module._flush_all()  # what the loop's flush does, minus the socket write
    return time.process_time() - start, len(payload)


async def main() -> None:
    best: dict[str, float] = {}
    for kind in ("ws", "socketio") * ROUNDS:
        elapsed, _ = _run(kind)
        best[kind] = min(best.get(kind, elapsed), elapsed)
    for kind, elapsed in best.items():  # the least disturbed round of each (a shared box)
        per_delivery = elapsed / (EVENTS * MEMBERS) * 1e6
        print(  # noqa: T201 - the experiment's output
            f"{kind:9s} {per_delivery:.2f} µs per delivery, "
            f"{per_delivery * MEMBERS:.1f} µs per event to {MEMBERS} members "
            f"(best of {ROUNDS} alternated rounds)"
        )


if __name__ == "__main__":
    asyncio.run(main())
