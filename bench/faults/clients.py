"""Protocol clients for the fault suite: each keeps what it was acked and what it was given.

A :class:`LoadClient` is one user on one WebSocket. It sends ``message:send`` with its own
``clientMessageId`` in a closed loop, retries a send whose outcome is unknown (``TIMEOUT``,
``SERVICE_UNAVAILABLE``, connection lost) with the same ``clientMessageId`` (safe, the
conversation service keeps it unique per conversation), and when its connection drops it
resumes as the protocol says: ``?session=<id>&since=<base64url JSON of its last seqs>``, on
the next gateway in its list. Every ``message:new`` it is given is recorded with its ``seq``,
so duplicates, gaps and reorderings can be counted afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from parley_contract.events import Event

logger = logging.getLogger(__name__)

RETRY_CODES = {"TIMEOUT", "SERVICE_UNAVAILABLE", "INTERNAL_ERROR", "RATE_LIMITED"}
GIVE_UP_SECONDS = 30.0  # a send not acked after this long counts as unacked
CALL_TIMEOUT = 12.0  # longer than the gateway's own 5 s budget: its TIMEOUT reply comes first


class ConnectionLost(Exception):
    """The connection closed with the command in flight: its outcome is unknown."""


@dataclass
class Send:
    cmid: str
    conv: str
    first_sent: float
    attempts: int = 0
    acked_at: float | None = None
    seq: int | None = None
    message_id: str | None = None
    errors: list[str] = field(default_factory=list)
    final_error: str | None = None
    last_attempt_wall: float = 0.0  # wall clock of the last attempt (stored by an earlier one?)
    # Each attempt: (time.monotonic() it started, seconds it took, outcome) — why a send
    # waited or was given up (the cluster report lists the given-up ones).
    trace: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def wait(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.first_sent


@dataclass
class Delivery:
    conv: str
    seq: int
    message_id: str
    at: float


class LoadClient:
    """One user: one connection at a time, resumed on the next gateway when it drops."""

    def __init__(
        self,
        user: str,
        token: str,
        ws_urls: list[str],
        first_gateway: int,
        resume_with_since: bool = True,
    ) -> None:
        self.user = user
        self.resume_with_since = resume_with_since
        self.token = token
        self.ws_urls = ws_urls
        self.gateway = first_gateway
        self.session_id: str | None = None
        self.last_seq: dict[str, int] = {}
        self.deliveries: list[Delivery] = []
        self.frames: list[dict[str, Any]] = []  # every non-message frame (agent scenarios)
        self.sends: list[Send] = []
        self.duplicates = 0
        self.reorders = 0
        self.gaps = 0
        self.seq_conflicts = 0
        self.epoch: dict[str, int] = {}  # conv -> epoch of the last event given (issue 11)
        self.epoch_changes = 0
        self.stale_epoch = 0
        self.reconnects = 0
        self.disconnected_for = 0.0
        self.resume_failures: list[str] = []
        self.degraded_resumes = 0
        self._seen: dict[str, dict[int, str]] = {}  # conv -> seq -> message id given
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._up = asyncio.Event()
        self._closing = False
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()

    # ------------------------------------------------------------------ connection

    def _url(self, resume: bool) -> str:
        query: dict[str, str] = {"access_token": self.token}
        if resume and self.session_id:
            query["session"] = self.session_id
            if self.resume_with_since and self.last_seq:
                raw = orjson.dumps(self.last_seq)
                query["since"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return f"{self.ws_urls[self.gateway % len(self.ws_urls)]}?{urlencode(query)}"

    async def connect(self, resume: bool = False) -> None:
        ws = await websockets.connect(
            self._url(resume), open_timeout=5, max_size=2**22, ping_interval=None
        )
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if first.get("event") not in ("connected", "reconnected"):
            await ws.close()
            raise RuntimeError(f"{self.user}: unexpected first frame {first}")
        rejoin: list[str] = []
        if first["event"] == "connected":
            if resume:
                self.resume_failures.append("session not found: new session")
                rejoin = list(self.last_seq)
        else:
            data = first.get("data") or {}
            restored = {c.get("conversationId") for c in data.get("conversations") or []}
            missing = sorted(set(self.last_seq) - restored)
            if missing:
                self.resume_failures.append(f"reconnected without {missing}")
            if data.get("degraded"):  # sessions unreadable: restored from since (issue 19)
                self.degraded_resumes += 1
        # A degraded resume hands out a new session id: always take the one given.
        self.session_id = first["data"]["sessionId"]
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))
        self._up.set()
        for conv in rejoin:  # the protocol's fallback: a new session re-joins with sinceSeq
            await self.call(
                Event.CONVERSATION_JOIN.value,
                {"conversationId": conv, "sinceSeq": self.last_seq[conv]},
            )

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_frame(orjson.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._up.clear()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost())
            self._pending.clear()
            if not self._closing:
                task = asyncio.create_task(self._reconnect())
                self._tasks.add(task)  # a strong reference until it is done
                task.add_done_callback(self._tasks.discard)

    async def _reconnect(self) -> None:
        async with self._lock:
            if self._up.is_set() or self._closing:
                return
            lost_at = time.monotonic()
            delay = 0.1
            while not self._closing:
                self.gateway += 1  # the next gateway: the dead one may still be down
                try:
                    await self.connect(resume=True)
                    break
                except (
                    OSError,
                    TimeoutError,
                    websockets.WebSocketException,
                    RuntimeError,
                    ConnectionLost,
                ) as exc:
                    logger.debug("%s: reconnect failed: %r", self.user, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            self.reconnects += 1
            self.disconnected_for = max(self.disconnected_for, time.monotonic() - lost_at)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        frame["_at"] = time.monotonic()  # when it arrived (agent scenarios time the turn)
        fid = frame.get("id")
        if fid is not None and fid in self._pending:
            fut = self._pending.pop(fid)
            if not fut.done():
                fut.set_result(frame)
            return
        if frame.get("event") == Event.MESSAGE_NEW.value and "seq" in frame:
            self._delivered(frame)
        else:
            self.frames.append(frame)
        self.changed.set()

    def _delivered(self, frame: dict[str, Any]) -> None:
        conv = str(frame.get("conversationId"))
        seq = int(frame["seq"])
        data = frame.get("data") or {}
        message_id = str(data.get("_id"))
        epoch = int(frame.get("epoch") or 0)
        current = self.epoch.get(conv, 0)
        if epoch < current:  # from before an epoch change: the protocol says drop it
            self.stale_epoch += 1
            return
        if epoch > current:  # the protocol's rule: a higher epoch voids the ordering state
            self.epoch[conv] = epoch
            self.epoch_changes += 1
            self._seen[conv] = {}
            self.last_seq[conv] = seq - 1
        seen = self._seen.setdefault(conv, {})
        last = self.last_seq.get(conv, 0)
        if seq in seen:
            if seen[seq] == message_id:
                self.duplicates += 1
                return
            self.seq_conflicts += 1  # another message under a seq already given
        elif seq < last:
            self.reorders += 1
        elif last and seq > last + 1:
            self.gaps += 1
        seen[seq] = message_id
        self.last_seq[conv] = max(last, seq)
        self.deliveries.append(Delivery(conv, seq, message_id, time.monotonic()))
        if data.get("role") == "assistant" or data.get("role") == "tool":
            self.frames.append(frame)

    # ------------------------------------------------------------------ commands

    async def call(
        self, event: str, data: dict[str, Any], seconds: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        ws = self._ws
        if ws is None or not self._up.is_set():
            raise ConnectionLost()
        cid = f"{self.user}-{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await ws.send(orjson.dumps({"event": event, "id": cid, "data": data}).decode())
        except websockets.ConnectionClosed:
            self._pending.pop(cid, None)
            raise ConnectionLost() from None
        try:
            return await asyncio.wait_for(fut, seconds)
        finally:
            self._pending.pop(cid, None)

    async def join(self, conv: str) -> None:
        reply = await self.call(Event.CONVERSATION_JOIN.value, {"conversationId": conv})
        if not reply.get("success"):
            raise RuntimeError(f"{self.user}: join {conv} failed: {reply}")
        self.last_seq.setdefault(conv, int(reply["data"].get("lastSeq") or 0))

    async def send(self, conv: str, content: str, cmid: str) -> Send:
        """Send until acked, retrying an unknown outcome with the same clientMessageId."""
        rec = Send(cmid, conv, time.monotonic())
        self.sends.append(rec)
        data = {"conversationId": conv, "content": content, "clientMessageId": cmid}
        while time.monotonic() - rec.first_sent < GIVE_UP_SECONDS:
            if not self._up.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._up.wait(), 1.0)
                continue
            rec.attempts += 1
            rec.last_attempt_wall = time.time()
            began = time.monotonic()
            try:
                reply = await self.call(Event.MESSAGE_SEND.value, data)
            except ConnectionLost:
                rec.errors.append("connection lost")
                rec.trace.append((began, time.monotonic() - began, "connection lost"))
                continue
            except TimeoutError:
                rec.errors.append("no reply")
                rec.trace.append((began, time.monotonic() - began, "no reply"))
                continue
            error = reply.get("error") or {}
            outcome = f"{error.get('code')}: {error.get('message')}"
            rec.trace.append((began, time.monotonic() - began, outcome if error else "ok"))
            if reply.get("success"):
                rec.acked_at = time.monotonic()
                rec.seq = int(reply["data"]["seq"])
                rec.message_id = str(reply["data"]["_id"])
                return rec
            code = str((reply.get("error") or {}).get("code"))
            rec.errors.append(code)
            if code not in RETRY_CODES:
                rec.final_error = code
                return rec
            await asyncio.sleep(min(0.1 * 2 ** (rec.attempts - 1), 0.5))  # capped backoff
        rec.final_error = rec.errors[-1] if rec.errors else "gave up"
        return rec

    async def drop(self) -> None:
        """Close the connection as a network failure would: the client resumes at once."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def send_loop(client: LoadClient, conv: str, interval: float, stop: asyncio.Event) -> None:
    """Closed loop: send, wait for the ack (or give up), pause, again, until ``stop``."""
    for n in itertools.count(1):
        if stop.is_set():
            return
        await client.send(conv, f"{client.user} message {n}", f"{client.user}-m{n}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
