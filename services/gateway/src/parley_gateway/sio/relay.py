"""No sticky sessions: requests for an Engine.IO session held by another gateway.

The first 16 characters of a session id are the key of the gateway that holds it. A polling
request that lands elsewhere is forwarded to that gateway over NATS and answered from there
(``op: http``). A WebSocket upgrade that lands elsewhere moves the session here: the probe
asks the holder to release the client's pending poll (``op: probe``), the upgrade packet
takes the session over (``op: handover``: the holder waits for the commands in flight,
detaches the connection quietly and hands over the packets not yet polled, the principal and
the delivered seq of each conversation), and this gateway rejoins those conversations from
those seqs (missed durable events are replayed, none twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from websockets.exceptions import ConnectionClosed

from parley_contract import jsonutil, subjects
from parley_contract.internal import Principal
from parley_gateway.sio import codec
from parley_gateway.sio.session import EioSession, SioConn, spawn
from parley_gateway.wsconn import WebSocket

if TYPE_CHECKING:
    from parley_gateway.sio.endpoint import SocketIO

logger = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
UNKNOWN_SID = (400, "application/json", b'{"code":1,"message":"Session ID unknown"}')


def key_of(sid: str) -> str | None:
    key = sid[:16]
    return key if len(key) == 16 and set(key) <= _HEX else None


class Relay:
    def __init__(self, sio: SocketIO) -> None:
        self.sio = sio
        self._sub: Subscription | None = None

    async def start(self) -> None:
        nc = self.sio.hub.nc
        assert nc is not None
        self._sub = await nc.subscribe(subjects.gateway_engineio(self.sio.key), cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def _ask(self, sid: str, doc: dict[str, Any], timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        nc = self.sio.hub.nc
        key = key_of(sid)
        if nc is None or key is None or key == self.sio.key:
            return None
        try:
            reply = await nc.request(
                subjects.gateway_engineio(key), jsonutil.dumps({**doc, "sid": sid}), timeout=timeout
            )
            answer = jsonutil.loads(reply.data)
        except (nats.errors.Error, ValueError):
            # That gateway is gone (or never existed): the client opens a new session and
            # recovers its Socket.IO connection there.
            return None
        return answer if isinstance(answer, dict) else None

    # ------------------------------------------------------------------ asking side

    async def forward(self, method: str, sid: str, body: bytes) -> tuple[int, str, bytes]:
        """A polling request for a session of another gateway: answered by that gateway."""
        doc = {"op": "http", "method": method, "body": body.decode("utf-8", "replace")}
        answer = await self._ask(sid, doc, self.sio.settings.heartbeat_seconds + 10)
        try:
            assert answer is not None
            return int(answer["status"]), str(answer["type"]), str(answer["body"]).encode()
        except (AssertionError, KeyError, TypeError, ValueError):
            return UNKNOWN_SID

    async def upgrade(self, ws: WebSocket, sid: str) -> EioSession | None:
        """A WebSocket upgrade here of a polling session held by another gateway."""
        try:
            if await asyncio.wait_for(ws.recv(), 10) != "2probe":
                return None
            probed = await self._ask(sid, {"op": "probe"}, 5)
            if not probed or not probed.get("ok"):
                return None
            await ws.send("3probe")
            if await asyncio.wait_for(ws.recv(), 10) != codec.EIO_UPGRADE:
                return None
        except (TimeoutError, ConnectionClosed):
            return None
        state = await self._ask(sid, {"op": "handover"}, 10)
        if not state or not state.get("ok"):
            return None
        return await self._adopt(ws, sid, state)

    # ------------------------------------------------------------------ holding side

    async def _on_msg(self, msg: Msg) -> None:
        spawn(self._answer(msg))  # a long poll must not hold up the subscription

    async def _answer(self, msg: Msg) -> None:
        try:
            req = jsonutil.loads(msg.data)
            op, sid = str(req["op"]), str(req["sid"])
        except (ValueError, KeyError, TypeError):
            return
        reply: dict[str, Any]
        if op == "http":
            status, ctype, out = await self.sio.local(
                str(req.get("method")), sid, str(req.get("body", "")).encode()
            )
            reply = {"status": status, "type": ctype, "body": out.decode()}
        elif op == "probe":
            reply = {"ok": self.sio.probe(sid)}
        elif op == "handover":
            reply = await self._detach(sid)
        else:
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(jsonutil.dumps(reply))

    # ------------------------------------------------------------------ the handed-over state

    async def _detach(self, sid: str) -> dict[str, Any]:
        """Hand session ``sid`` to the gateway its WebSocket landed on (:meth:`upgrade`)."""
        sio = self.sio
        eio = sio.sessions.get(sid)
        if eio is None or eio.closed or eio.ws is not None:
            return {"ok": False}
        conn = eio.conn
        if conn is not None:
            deadline = time.monotonic() + 2.0
            while conn.busy and time.monotonic() < deadline:  # noqa: ASYNC110 - replies first
                await asyncio.sleep(0.01)
        state: dict[str, Any] = {
            "ok": True,
            "packets": [p.decode() for p in eio.queue],
            "token": eio.token,
        }
        eio.queue, eio.queued = [], 0
        eio.closed = True  # no close packet: the client is not told anything
        if eio.poll is not None and not eio.poll.done():
            eio.poll.set_result(None)
        sio.sessions.pop(sid, None)
        if conn is not None:
            state.update(
                principal=conn.principal.model_dump(mode="json"),
                exp=conn.exp,
                sessionId=conn.session_id,
                joined=dict(conn.joined),
            )
            conn.kicked = True  # the session is the new gateway's now: not saved from here
            for cid in list(conn.joined):
                await sio.hub.leave(conn, cid, announce=False)
            conn.closing = True
            spawn(sio.gw.close_conn(conn))
        return state

    async def _adopt(self, ws: WebSocket, sid: str, state: dict[str, Any]) -> EioSession:
        """Session ``sid`` moved here on ``ws``: its packets, then its conversations."""
        sio = self.sio
        token = state.get("token")
        eio = EioSession(
            sio, sid, sio.settings.send_queue_limit, token if isinstance(token, str) else None
        )
        eio.ws = ws
        sio.sessions[sid] = eio
        for packet in state.get("packets") or []:
            if isinstance(packet, str):
                eio.send(packet.encode())
        if "principal" not in state:
            return eio  # not connected yet (no Socket.IO CONNECT so far)
        try:
            principal = Principal.model_validate(state["principal"])
            joined = {str(k): int(v) for k, v in dict(state.get("joined") or {}).items()}
            conn = SioConn(
                eio,
                principal,
                float(state["exp"]),
                str(state["sessionId"]),
                rate=sio.settings.commands_per_second,
                send_limit=sio.settings.send_queue_limit,
                metrics=sio.gw.metrics,
            )
        except (ValueError, TypeError, KeyError):
            logger.warning("bad handover of %s", sid)
            eio.end()
            return eio
        eio.conn = conn
        logger.info("Engine.IO session %s moved here (its WebSocket landed here)", sid)
        try:
            await sio.hub.register(conn)
            await sio.gw.rejoin(conn, joined, quiet=True)
            await sio.hub.save_session(conn, ack=False)
        except Exception:
            logger.exception("taking over %r failed", conn)
            eio.end()
        return eio
