"""The public port: one listener; the first request's head decides who serves the connection.

Each accepted connection starts with a small sniffing protocol (:class:`_Sniffer`) that only
buffers the first request head (bounded: ``max_head_bytes``, ``head_timeout`` seconds). Then:

- a ``GET`` with ``Upgrade: websocket`` to a registered path (:class:`WsRoute`): a
  well-formed head with the plain upgrade headers nearly every client sends gets a
  :class:`~parley_gateway.wsconn.LeanConnection` (RFC 6455 done by one small object, opened
  from the parsed request, the 101 written with the handler's first frames: ``wsopen.py``);
  another well-formed head gets websockets' own ``ServerConnection`` opened from the parsed
  request; any other head is fed to websockets, which parses it and answers its errors. Both
  kinds live under websockets' ``Server`` (its sets of connections and handler tasks);
- anything else goes to uvicorn's h11 protocol (:mod:`parley_gateway.front_http`) running
  the ASGI app: keep-alive, pipelining, every method, streamed request bodies, HEAD.

A WebSocket upgrade that comes later on a keep-alive HTTP connection (a proxy's pooled
upstream connection, e.g. nginx with ``keepalive``) is handed over the same way from the HTTP
side (``HttpProtocol.handle_websocket_upgrade``), as uvicorn hands upgrades to its own
WebSocket protocols.

Why not one stack: uvicorn's WebSocket protocols cost about 30 KB per idle connection
against ~10 KB for the slimmed websockets connection (docs/benchmarks.md), and websockets'
HTTP parser takes GET without a body only. The sniffer is dropped at the hand-over, so an
idle WebSocket connection keeps nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import re
from collections.abc import Iterable, Mapping
from typing import cast

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode
from parley_gateway import openclock, wsopen
from parley_gateway.front_http import ASGIApp, HttpProtocol, Refused, edge, linger, raw_response
from parley_gateway.wsconn import BoundedServerConnection, WebSocket
from parley_gateway.wshead import ParsedRequest
from parley_gateway.wsopen import WsRoute

__all__ = ["Front", "WsRoute", "json_response"]  # WsRoute: declared in wsopen.py

logger = logging.getLogger(__name__)

_HEAD_END = re.compile(rb"\r?\n\r?\n")
# websockets' own default for the opening handshake (after the head has been read).
OPEN_TIMEOUT_SECONDS = 10.0
# Connections the kernel completes and queues before the loop accepts them (capped by
# net.core.somaxconn). asyncio's default, 100, overflowed under a burst of connects (a
# reconnect storm, the bench's 200 handshakes in flight): the dropped SYNs came back after
# 1, 3, 7 s of TCP retransmission (connect p99 7.7 s at 234 connects/s).
LISTEN_BACKLOG = 4096


def json_response(status: int, body: dict[str, object]) -> Response:
    """A websockets handshake response (``process_request``) with a JSON body."""
    data = jsonutil.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


class Front:
    """The listener, the sniffing hand-over and the graceful end of both kinds of connection."""

    def __init__(
        self,
        app: ASGIApp,
        ws_routes: Mapping[str, WsRoute],
        *,
        host: str,
        port: int,
        max_head_bytes: int = 16 * 1024,
        head_timeout: float = 10.0,
        keepalive_seconds: float = 5.0,
        server_header: str | None = "parley-gateway",
        on_refused: Refused | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.ws_routes = {path.encode("latin-1"): route for path, route in ws_routes.items()}
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # one of several processes on the port (workers.py)
        self.max_head_bytes = max_head_bytes
        self.head_timeout = head_timeout
        self.server_header = server_header
        self.open_timeout = OPEN_TIMEOUT_SECONDS
        self.date = b""  # the 101's Date (wsopen.accept), refreshed every second
        # Called with "head_timeout", "head_too_large" or "bad_request" for each connection
        # the front answers and closes itself (metrics).
        self.on_refused = on_refused
        self.config = Config(
            edge(app),
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            headers=[("server", server_header)] if server_header else [],
            timeout_keep_alive=int(keepalive_seconds) or 1,
            h11_max_incomplete_event_size=max_head_bytes,
            log_config=None,
            access_log=False,
        )
        self.config.load()
        self.http_state = ServerState()
        self.app_state: dict[str, object] = {}
        self.sniffing: set[_Sniffer] = set()
        self.ws_server: Server | None = None
        self._date_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> Server:
        loop = self.loop = asyncio.get_running_loop()

        async def create_server() -> asyncio.Server:
            return await loop.create_server(
                lambda: _Sniffer(self),
                self.host,
                self.port,
                backlog=LISTEN_BACKLOG,
                reuse_port=self.reuse_port or None,
            )

        server = Server(create_server, self._ws_lifecycle)
        self.ws_server = await server
        self._tick_date()
        return server

    def _tick_date(self) -> None:
        assert self.loop is not None
        date = self.date = email.utils.formatdate(usegmt=True).encode("latin-1")
        self.http_state.default_headers = [(b"date", date), *self.config.encoded_headers]
        self._date_timer = self.loop.call_later(1.0, self._tick_date)

    def close(self) -> None:
        """Stop accepting; close WebSocket connections (1001) and idle HTTP connections.

        HTTP requests in progress finish, then their connection closes. Heads not yet
        complete are dropped.
        """
        if self.ws_server is not None:
            self.ws_server.close(close_connections=True)
        for sniffer in list(self.sniffing):
            sniffer.drop()
        for conn in list(self.http_state.connections):
            conn.shutdown()

    async def wait_closed(self, grace: float) -> None:
        """Until every connection of both kinds is gone (HTTP ones are aborted at ``grace``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                if self.ws_server is not None:
                    await self.ws_server.wait_closed()
                while self.http_state.connections or self.http_state.tasks:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        for conn in list(self.http_state.connections):
            if conn.transport is not None:  # pragma: no cover - requests stuck past timeout
                conn.transport.abort()
        if self._date_timer is not None:
            self._date_timer.cancel()

    # ------------------------------------------------------------------ hand-over

    def route_for(self, head: bytes) -> WsRoute | None:
        """The route of a head that asks for a WebSocket upgrade to a registered path."""
        line, _, rest = head.partition(b"\n")
        parts = line.rstrip(b"\r").split(b" ")
        if len(parts) != 3:
            return None
        headers = (raw.partition(b":")[::2] for raw in rest.split(b"\n") if b":" in raw)
        return self.route_of(parts[0], parts[1], headers)

    def route_of(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> WsRoute | None:
        """The route of a request (its method, target and headers) if it is a ``GET`` with
        ``Upgrade: websocket`` to a registered path; websockets checks the rest."""
        if method != b"GET":
            return None
        route = self.ws_routes.get(target.partition(b"?")[0])
        if route is None:
            return None
        for name, value in headers:
            if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
                return route
        return None

    def open_parsed(self, transport: asyncio.Transport, data: bytes, head_end: int) -> bool:
        """A well-formed upgrade head opened without websockets parsing it again (wsopen.py);
        False: not one (routed as before)."""
        assert self.ws_server is not None
        return wsopen.open_parsed(
            transport, data, head_end, routes=self.ws_routes, server=self.ws_server, front=self
        )

    def start_ws(self, transport: asyncio.Transport, route: WsRoute, data: bytes) -> None:
        # What websockets' serve() builds per connection (compression off, no subprotocols).
        protocol = ServerProtocol(max_size=route.max_size)
        assert self.ws_server is not None
        conn = BoundedServerConnection(
            protocol,
            self.ws_server,
            ping_interval=route.ping_interval,
            ping_timeout=route.ping_timeout,
            close_timeout=route.close_timeout,
            max_queue=route.max_queue,
        )
        conn.send_limit = route.send_limit
        transport.set_protocol(conn)
        conn.connection_made(transport)  # starts _ws_lifecycle (websockets' Server.handler)
        conn.data_received(data)

    def start_http(self, transport: asyncio.Transport, data: bytes) -> None:
        assert self.loop is not None
        proto = HttpProtocol(
            self.config,
            self.http_state,
            self.app_state,
            self.loop,
            head_timeout=self.head_timeout,
            server_header=self.server_header,
            on_refused=self.on_refused,
            front=self,
        )
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(data)

    # ------------------------------------------------------------------ WebSocket side

    def _route(self, request: Request) -> WsRoute | None:
        return self.ws_routes.get(request.path.partition("?")[0].encode("latin-1"))

    async def _process_request(self, ws: WebSocket, request: Request) -> Response | None:
        route = self._route(request)
        if route is None:  # pragma: no cover - the sniffer read the same request line
            return json_response(404, envelopes.fail(ErrorCode.NOT_FOUND, "no such endpoint"))
        if route.process_request is None:
            return None
        return await route.process_request(ws, request)

    async def _ws_lifecycle(self, connection: ServerConnection) -> None:
        """websockets' ``serve()`` connection handler, with the route chosen by path."""
        server = self.ws_server
        assert server is not None
        try:
            async with asyncio.timeout(self.open_timeout) as timer:
                openclock.OPEN_CLOCK.set(openclock.TimeoutClock(timer))  # pausable (resumes)
                if type(connection.request) is ParsedRequest:
                    await wsopen.handshake(
                        connection,
                        connection.request,
                        self._process_request,
                        date=self.date,
                        server_header=self.server_header,
                    )
                else:
                    await connection.handshake(
                        self._process_request, None, server_header=self.server_header
                    )
            openclock.OPEN_CLOCK.set(None)
            route = self._route(connection.request) if connection.request else None
            if connection.protocol.state is not State.OPEN or route is None:
                connection.transport.abort()
                return
            server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                async with connection:
                    await route.handler(connection)
            except Exception:
                connection.logger.error("connection handler failed", exc_info=True)
            finally:
                server.all_connections.discard(connection)
        except Exception:
            # Handshake timed out or failed unexpectedly: do not leak the connection.
            connection.transport.abort()
        finally:
            task = asyncio.current_task()
            if task is not None:
                server.handler_tasks.discard(task)


class _Sniffer(asyncio.Protocol):
    """Buffers the first request head of a connection, then hands the connection over."""

    __slots__ = ("buf", "front", "lingering", "scanned", "timer", "transport")

    def __init__(self, front: Front) -> None:
        self.front = front
        self.buf = bytearray()
        self.scanned = 0
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.front.head_timeout, self._timed_out)
        self.front.sniffing.add(self)

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # after an error answer: dropped (see front_http.linger)
            return
        front = self.front
        buf = self.buf
        buf += data
        end = _HEAD_END.search(buf, max(0, self.scanned - 3))
        if end is None or end.start() > front.max_head_bytes:
            if len(buf) > front.max_head_bytes:
                self._refuse(
                    "head_too_large",
                    431,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request head larger than {front.max_head_bytes} bytes",
                )
            else:
                self.scanned = len(buf)
            return
        transport = self.transport
        assert transport is not None
        self._forget()
        pending = bytes(buf)
        self.buf = bytearray()
        if front.open_parsed(transport, pending, end.start()):
            return
        route = front.route_for(pending[: end.start()])
        if route is not None:
            front.start_ws(transport, route, pending)
        else:
            front.start_http(transport, pending)

    def eof_received(self) -> bool | None:
        self.drop()  # half a head and nothing more to come
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _timed_out(self) -> None:
        self.timer = None
        if self.buf:
            self._refuse(
                "head_timeout",
                408,
                ErrorCode.TIMEOUT,
                f"request head not complete within {self.front.head_timeout:g} seconds",
            )
        else:  # never said anything (a browser's speculative connection): just close
            self.drop()

    def _refuse(self, reason: str, status: int, code: ErrorCode, message: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.front.on_refused is not None:
            self.front.on_refused(reason)
        self._forget()
        self.buf = bytearray()
        self.lingering = True
        transport.write(raw_response(status, code, message, server=self.front.server_header))
        linger(transport, asyncio.get_running_loop())

    def drop(self) -> None:
        self._forget()
        self.buf = bytearray()
        if self.transport is not None:
            self.transport.close()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.front.sniffing.discard(self)
