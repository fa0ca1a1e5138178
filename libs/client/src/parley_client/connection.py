"""The connection: gateways in turn, exact resume, commands by id, frames to subscribers.

What docs/protocol.md asks of a client, done once here:

- **Connect** to the first gateway of the list; after a drop, back off (capped, jittered)
  and try the next ones in turn.
- **Resume** (section 1, "Exactness"): reconnect with ``session=<sessionId>`` and
  ``since=<base64url(JSON {conversationId: lastSeq})>`` for every joined conversation,
  where lastSeq is the last durable seq this client *received*. After ``reconnected`` the
  conversations it does not list are joined again with ``sinceSeq``; after ``connected`` (the
  session expired) all of them are.
- **Order**: durable events (``conversationId`` + ``seq``) are handed out once, in seq
  order; a repeat is dropped; a higher ``epoch`` restarts the conversation's ordering, a
  lower one is from before the reset and dropped (4.1; ordering.py).
- **Commands** carry an id; the reply with that id resolves them or raises ParleyError.
  A retryable command (idempotent: ``message:send`` with a clientMessageId, ``join``) that
  lost its socket is sent again after the reconnect; any other fails with
  SERVICE_UNAVAILABLE and ``details.outcomeUnknown``.

Connect, resume and commands share one state (the socket, the session id, the commands in
flight) and change together on every drop and reconnect. Beside it: where and when to
(re)connect (dial.py: the ``/ws`` URL, ``since``, the backoff), the frame types (frames.py),
the subscriber streams (subscriptions.py), and the per-conversation order of durable events
(ordering.py), which the resume reads its ``since`` from.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from parley_client.dial import default_backoff, since_param, ws_url
from parley_client.frames import Frame, error_of, parse
from parley_client.ordering import Ordering
from parley_client.subscriptions import Recorder, Stream
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.internal import Principal
from parley_contract.server_events import ConnectedData

logger = logging.getLogger(__name__)

CLOSE_TOKEN_EXPIRED = 4401
_ids = itertools.count(1)


@dataclass
class _Pending:
    event: str
    data: dict[str, Any]
    future: asyncio.Future[Any]
    retry: bool
    sent: bool = False


class Connection:
    def __init__(
        self,
        urls: Sequence[str] | str,
        token: str,
        *,
        request_timeout: float = 15.0,
        open_timeout: float = 10.0,
        backoff: Callable[[int], float] = default_backoff,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one gateway URL")
        self.token = token
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff
        self.session_id: str | None = None
        self.principal: Principal | None = None
        self.instance_id: str | None = None
        self.limits: dict[str, float] = {}
        self.reconnects = 0
        self.current_url = self.urls[0]
        self._index = 0
        self._ws: ClientConnection | None = None
        self._open = asyncio.Event()
        self._wanted = False
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[ConnectedData] | None = None
        self._pending: dict[str, _Pending] = {}
        self._order = Ordering()
        self._joined: dict[str, None] = {}  # insertion-ordered set
        self._subscribers: list[Stream | Recorder] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client_id = next(_ids)
        self._seq = itertools.count(1)

    # ---------------------------------------------------------------- state

    def last_seq(self, conversation_id: str) -> int:
        return self._order.last_seq(conversation_id)

    @property
    def duplicates_dropped(self) -> int:
        """Durable events received again (or from before a reset) and not handed out."""
        return self._order.duplicates_dropped

    @property
    def joined(self) -> list[str]:
        return list(self._joined)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def events(self) -> Stream:
        """Every frame from now on, to iterate (``async for frame in client.events()``)."""
        stream = Stream(self._unsubscribe)
        self._subscribers.append(stream)
        return stream

    def record(self) -> Recorder:
        """Every frame from now on, kept, to search and wait on."""
        recorder = Recorder(self._unsubscribe)
        self._subscribers.append(recorder)
        return recorder

    def _unsubscribe(self, sub: Stream | Recorder) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    # ---------------------------------------------------------------- lifecycle

    async def connect(self) -> ConnectedData:
        """Open the first session; ParleyError(UNAUTHORIZED) if every gateway refuses the
        token, TimeoutError if none answers within ``open_timeout`` times the number of URLs."""
        if self._runner is not None:
            raise RuntimeError("already connected")
        self._wanted = True
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name="parley-client")
        try:
            async with asyncio.timeout(self.open_timeout * max(2, len(self.urls))):
                return await asyncio.shield(self._first)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close for good; commands waiting for a reply fail."""
        self._wanted = False
        self._open.clear()
        if self._ws is not None:
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await self._ws.close(1000, "bye")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(
                    ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "client closed")
                )
        for sub in list(self._subscribers):
            if isinstance(sub, Stream):
                sub.close()

    async def drop(self) -> None:
        """Drop the socket as a network failure would (the client resumes): tests, demos."""
        if self._ws is not None:
            await self._ws.close(4000, "client dropped")

    async def __aenter__(self) -> Connection:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _url(self) -> str:
        query: dict[str, str] = {"access_token": self.token}
        if self.session_id:
            query["session"] = self.session_id
            since = {cid: self.last_seq(cid) for cid in self._joined}
            if since:
                query["since"] = since_param(since)
        return f"{ws_url(self.current_url)}?{urllib.parse.urlencode(query)}"

    async def _run(self) -> None:
        attempt = 0
        while self._wanted:
            refused: ParleyError | None = None
            try:
                async with connect(
                    self._url(), max_size=None, open_timeout=self.open_timeout
                ) as ws:
                    self._ws = ws
                    attempt = 0
                    async for raw in ws:
                        self._on_raw(raw)
            except InvalidStatus as exc:
                body = exc.response.body or b""
                with contextlib.suppress(ValueError):
                    refused = error_of(json.loads(body).get("error"))
                if exc.response.status_code != 401:
                    refused = None  # 403 origin, 503 draining: another gateway may do
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                logger.debug("connection to %s failed or dropped: %r", self.current_url, exc)
            code = self._ws.close_code if self._ws is not None else None
            self._ws = None
            self._on_disconnect()
            if code == CLOSE_TOKEN_EXPIRED:
                refused = ParleyError(ErrorCode.UNAUTHORIZED, "token expired")
            if refused is not None:  # the token will not do on any gateway: give up
                self._fail(refused)
                return
            if not self._wanted:
                return
            await asyncio.sleep(self.backoff(attempt))
            attempt += 1
            if attempt > 1 or len(self.urls) > 1:  # the next gateway after a failure
                self._index = (self._index + 1) % len(self.urls)
                self.current_url = self.urls[self._index]

    def _fail(self, err: ParleyError) -> None:
        self._wanted = False
        if self._first is not None and not self._first.done():
            self._first.set_exception(err)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(err)

    def _on_disconnect(self) -> None:
        was_open = self._open.is_set()
        self._open.clear()
        for pending in self._pending.values():
            if pending.sent and not pending.retry and not pending.future.done():
                pending.future.set_exception(
                    ParleyError(
                        ErrorCode.SERVICE_UNAVAILABLE,
                        "connection lost before the reply",
                        {"outcomeUnknown": True},
                    )
                )
            pending.sent = False
        if was_open:
            logger.info("disconnected from %s; resuming", self.current_url)

    # ---------------------------------------------------------------- frames

    def _on_raw(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
            return
        event = frame["event"]
        if event in (Event.CONNECTED, Event.RECONNECTED):
            self._on_session(frame)
            return
        pending = self._pending.get(frame["id"]) if isinstance(frame.get("id"), str) else None
        if pending is not None and event in (pending.event, Event.ERROR):
            if not pending.future.done():
                if frame.get("success"):
                    pending.future.set_result(frame.get("data"))
                else:
                    pending.future.set_exception(error_of(frame.get("error")))
            return
        parsed = Frame.of(frame)
        if self._order.accept(parsed):
            self._publish(parsed)

    def _publish(self, frame: Frame) -> None:
        for sub in list(self._subscribers):
            sub.put(frame)

    def _on_session(self, raw: dict[str, Any]) -> None:
        try:
            data = parse(ConnectedData, raw.get("data"))
        except ParleyError as exc:
            logger.warning("bad %s frame: %s", raw.get("event"), exc.message)
            return
        resumed = raw["event"] == Event.RECONNECTED
        was_dropped = self.session_id is not None
        self.session_id = data.session_id
        self.principal = data.principal
        self.instance_id = data.instance_id
        self.limits = data.limits
        self._open.set()
        if was_dropped:
            self.reconnects += 1
            restored = {c.conversation_id for c in data.conversations or []} if resumed else set()
            for cid in self._joined:
                if cid not in restored:
                    self._spawn(self._rejoin(cid))
        for cmd_id, pending in self._pending.items():
            if not pending.sent and not pending.future.done():
                self._spawn(self._transmit(cmd_id, pending))
        if self._first is not None and not self._first.done():
            self._first.set_result(data)
        self._publish(Frame.of(raw))

    async def _rejoin(self, cid: str) -> None:
        try:
            await self.request(
                Event.CONVERSATION_JOIN,
                {"conversationId": cid, "sinceSeq": self.last_seq(cid)},
                retry=True,
            )
        except ParleyError as exc:
            logger.warning("could not rejoin %s: %s", cid, exc.message)
            self._joined.pop(cid, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- commands

    async def _transmit(self, cmd_id: str, pending: _Pending) -> None:
        ws = self._ws
        if ws is None or not self._open.is_set() or pending.sent:
            return
        pending.sent = True
        frame = {"event": pending.event, "id": cmd_id, "data": pending.data}
        try:
            await ws.send(json.dumps(frame, separators=(",", ":")))
        except websockets.WebSocketException:
            pending.sent = False  # the reconnect sends it (if it may be sent again)

    async def request(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        retry: bool = False,
    ) -> Any:
        """Send a command and return its reply's ``data``; ParleyError on an error reply,
        on TIMEOUT (``details.outcomeUnknown``), or when the connection is gone and the
        command may not be sent again (``retry``: only for idempotent commands)."""
        name = event.value if isinstance(event, Event) else event
        if not self._wanted:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "not connected")
        cmd_id = f"py{self._client_id}-{next(self._seq)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending(name, dict(data or {}), future, retry)
        self._pending[cmd_id] = pending
        wait = self.request_timeout if timeout is None else timeout
        try:
            await self._transmit(cmd_id, pending)
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            raise ParleyError(
                ErrorCode.TIMEOUT,
                f"no reply to {name} within {wait} s",
                {"outcomeUnknown": True, "clientSide": True},
            ) from None
        finally:
            self._pending.pop(cmd_id, None)

    async def notify(self, event: Event | str, data: dict[str, Any]) -> None:
        """A command without an id (typing, presence): no reply; dropped while disconnected."""
        ws = self._ws
        if ws is not None and self._open.is_set():
            name = event.value if isinstance(event, Event) else event
            with contextlib.suppress(websockets.WebSocketException):
                await ws.send(json.dumps({"event": name, "data": data}, separators=(",", ":")))
