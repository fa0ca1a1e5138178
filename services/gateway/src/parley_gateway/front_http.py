"""The HTTP side of the public port: uvicorn's h11 protocol, hardened, and an ASGI edge.

:class:`HttpProtocol` is uvicorn's ``H11Protocol`` (keep-alive, pipelining, every method,
streamed bodies, HEAD) with three changes for hostile clients:

- a request head must arrive within ``head_timeout`` seconds once its first byte has come,
  on every request of a keep-alive connection (uvicorn only times out *idle* keep-alive
  connections, so a head sent a byte at a time would hold a connection for ever); the head's
  size is bounded by h11 (``h11_max_incomplete_event_size``);
- a request body may not stall longer than the same ``head_timeout`` between two reads
  (nginx's ``client_body_timeout``): a body that stops coming would otherwise hold the
  connection and the handler awaiting it for ever; 408 if no answer has started, else the
  connection is closed;
- a request h11 cannot parse gets a 400 with the protocol's error envelope (uvicorn answers
  plain text), and the connection is closed;
- a WebSocket upgrade to a registered path on a later request of a keep-alive connection is
  handed to websockets (``Front.start_ws``), as the first request's is by the sniffer; any
  other upgrade request is served as plain HTTP, without uvicorn's warnings (any client
  could fill the log with them).

h11 rather than httptools: h11 bounds the head it buffers, and is what uvicorn installs
without extras (httptools is not in the lock).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import h11
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY as BODY_LIMIT_KEY
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode

if TYPE_CHECKING:
    from parley_gateway.front import Front, WsRoute

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# After an error answer the connection is half-closed and what the client still sends is
# read and dropped for this long, so that the answer is not lost to a TCP reset (a close
# with unread bytes) while the client is still writing its head or body.
LINGER_SECONDS = 2.0


def linger(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Half-close after the last write; close for good after LINGER_SECONDS at the latest."""
    if transport.can_write_eof():
        transport.write_eof()
    loop.call_later(LINGER_SECONDS, transport.close)


def raw_response(status: int, code: ErrorCode, message: str, *, server: str | None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with an error envelope as body."""
    body = jsonutil.dumps(envelopes.fail(code, message))
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if server:
        head.append(f"Server: {server}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _DropInvalidRequest(logging.Filter):
    """uvicorn logs every unparsable request at WARNING: any client could fill the log.

    They are answered (400) and counted (``parley_gateway_http_refusals_total``) instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


# The logger of uvicorn's protocol and request cycles here (errors of the app included).
uvicorn_logger = logging.getLogger(__name__ + ".uvicorn")
uvicorn_logger.addFilter(_DropInvalidRequest())

Refused = Callable[[str], None]


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with a head timeout and enveloped 400s (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        head_timeout: float,
        server_header: str | None,
        on_refused: Refused | None = None,
        front: Front | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop=loop)
        self.front = front
        self.ws_route: WsRoute | None = None
        # uvicorn logs every request when any handler is reachable (the root logger's are).
        self.access_log = False
        self.logger = uvicorn_logger
        self.on_refused = on_refused
        self.head_timeout = head_timeout
        self.server_header = server_header
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def data_received(self, data: bytes) -> None:
        if not self.lingering:  # after an error answer: dropped (see linger)
            super().data_received(data)

    def eof_received(self) -> None:
        if self.lingering:
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_head()
        self._watch_body()

    def _watch_head(self) -> None:
        """Arm the head timer while part of a request head waits in h11's buffer."""
        partial = (
            self.conn.their_state is h11.IDLE
            and bool(self.conn.trailing_data[0])
            and not self.transport.is_closing()
        )
        if partial:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(
                "head_timeout",
                408,
                ErrorCode.TIMEOUT,
                f"request head not complete within {self.head_timeout:g} seconds",
            )

    def _watch_body(self) -> None:
        """Re-arm the body timer on every read while a request body is still coming."""
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.body_timer = self.loop.call_later(self.head_timeout, self._body_stalled)

    def _body_stalled(self) -> None:
        self.body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the handler is not reading yet: not the client's stall
            self.body_timer = self.loop.call_later(self.head_timeout, self._body_stalled)
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None:  # the handler's receive() ends, its answer goes nowhere
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.transport.close()
            return
        self._refuse(
            "body_timeout",
            408,
            ErrorCode.TIMEOUT,
            f"request body stalled for {self.head_timeout:g} seconds",
        )

    def _refuse(self, reason: str, status: int, code: ErrorCode, message: str) -> None:
        # Written past h11 (it has no request to answer); the connection ends here.
        if self.lingering or self.transport.is_closing():
            return
        self.lingering = True
        if self.on_refused is not None:
            self.on_refused(reason)
        self.transport.write(raw_response(status, code, message, server=self.server_header))
        linger(self.transport, self.loop)

    def send_400_response(self, msg: str) -> None:
        self._refuse("bad_request", 400, ErrorCode.VALIDATION_ERROR, "invalid HTTP request")

    def _should_upgrade(self) -> bool:
        """A WebSocket upgrade to a registered path, on any request of the connection."""
        front = self.front
        if front is None:
            return False
        self.ws_route = front.route_of(
            self.scope["method"].encode("ascii"), self.scope["raw_path"], self.headers
        )
        if self.ws_route is None:
            logger.debug("upgrade request (if any) served as plain HTTP")
            return False
        return True

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """Hand the connection to websockets: the request again, as bytes, and what follows."""
        route, front = self.ws_route, self.front
        assert route is not None and front is not None
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        head = [event.method, b" ", event.target, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.flow.resume_reading()
        front.start_ws(self.transport, route, b"".join(head) + self.conn.trailing_data[0])

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Graceful end (SIGTERM): close when idle, else after the response in progress."""
        try:
            super().shutdown()
        except h11.LocalProtocolError:  # h11 in a state where "closed" is not a valid event
            self.transport.close()


def edge(app: ASGIApp) -> ASGIApp:
    """What every HTTP request passes first: HEAD served as GET, 413 always an envelope.

    - HEAD: the app sees GET (FastAPI routes declare GET only); uvicorn, which keeps its own
      scope with the real method, sends the headers without the body.
    - 413: FastAPI's body limit (``max_body_size``) answers plain text when the limit is
      hit outside a route's body parsing (e.g. a Content-Length too large for a route that
      does not read the body); that answer becomes the envelope. Every 413 closes the
      connection, so the rest of an oversized body is not read.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        replaced = False

        async def send_checked(message: Message) -> None:
            nonlocal replaced
            if replaced:  # the plain-text body of a replaced 413
                return
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                ctype = dict(headers).get(b"content-type", b"")
                if not ctype.startswith(b"application/json"):
                    limit = scope.get(BODY_LIMIT_KEY)  # set while FastAPI's limit applies
                    body = jsonutil.dumps(
                        envelopes.fail(
                            ErrorCode.PAYLOAD_TOO_LARGE,
                            f"request body larger than {limit} bytes"
                            if isinstance(limit, int)
                            else "request body too large",
                            {"limit": limit} if isinstance(limit, int) else None,
                        )
                    )
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    replaced = True
                    return
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_checked)

    return serve
