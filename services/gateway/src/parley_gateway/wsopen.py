"""The WebSocket opening handshake of the front (front.py), from the head the sniffer read.

websockets' ``ServerConnection`` would parse the head again (a generator step per line), run
its handshake (two futures and ``asyncio.wait``, an async context manager around the write),
build the 101 response as a ``Response`` with ``Headers`` and write it in a socket write of
its own. For the common case (a well-formed upgrade head) the front does instead:

- :func:`~parley_gateway.wshead.parse_head`: the head parsed once into websockets'
  ``Request`` (a head websockets would not parse the same way takes the unchanged path:
  websockets parses it and answers its own error);
- :func:`new_protocol`: websockets' ``ServerProtocol`` where its parser would be after the
  request, in its frame loop, still ``CONNECTING``;
- :func:`accept`: the RFC 6455 checks are websockets' own (``ServerProtocol.process_request``:
  Connection, Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version, one Origin), after the
  gateway's ``process_request`` (origin policy, readiness, token) as in websockets; the 101
  is queued first in the protocol's outgoing list, where the handler's first frames (the
  ``connected`` hello) join it: :func:`send_queued`, called at the end of the loop iteration,
  writes them together in one socket write.

Anything else (a rejection, a failing check) goes through websockets' own code.

A head that also passes :func:`~parley_gateway.wshead.plain_key` (the plain upgrade nearly
every client sends) is not given to websockets at all: :func:`open_lean` runs the same steps
(``process_request``, its answers, 500 if it fails, 503 once the server closes, the 101 with
the first frames) for a :class:`~parley_gateway.wsconn.LeanConnection`.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import InvalidHandshake
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from parley_gateway import openclock
from parley_gateway.slim import done_future
from parley_gateway.wsconn import (
    BoundedServerConnection,
    LeanConnection,
    WebSocket,
    as_any,
)
from parley_gateway.wsframes import SEND_LIMIT
from parley_gateway.wshead import (
    asks_upgrade,
    parse_head,
    plain_accept,
    plain_key,
    switching,
)

ProcessRequest = Callable[[WebSocket, Request], Awaitable[Response | None]]
WsHandler = Callable[[WebSocket], Awaitable[None]]

logger = logging.getLogger(__name__)

# websockets' answers (its ServerConnection.handshake) when process_request fails, and when
# the server is closing.
_FAILED = (
    http.HTTPStatus.INTERNAL_SERVER_ERROR,
    "Failed to open a WebSocket connection.\nSee server log for more information.\n",
)
_SHUTTING_DOWN = (http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")


class FrontState(Protocol):
    """What the lean opening needs of the front (front.py's ``Front``)."""

    date: bytes  # the 101's Date, refreshed every second
    server_header: str | None
    open_timeout: float


@dataclass(frozen=True, slots=True)
class WsRoute:
    """A WebSocket endpoint: ``handler`` after ``process_request`` (None: accept) said yes.

    The remaining fields are websockets' per-connection options (see ``serve()``).
    """

    handler: WsHandler
    process_request: ProcessRequest | None = None
    max_size: int | None = 64 * 1024
    max_queue: int | None = 16
    close_timeout: float = 5.0
    ping_interval: float | None = None
    ping_timeout: float | None = None
    send_limit: int = SEND_LIMIT  # unread bytes before the client is failed with 1013


def open_parsed(
    transport: asyncio.Transport,
    data: bytes,
    head_end: int,
    *,
    routes: Mapping[bytes, WsRoute],
    server: Server,
    front: FrontState,
) -> bool:
    """Hand a connection whose first bytes are ``data`` (a head ending at ``head_end``) to a
    :class:`LeanConnection` (a plain upgrade: :func:`plain_key`) or a websockets connection
    opened from the parsed request (:func:`handshake` then runs in its handler task); False
    when the head is not a well-formed upgrade to a route."""
    if not data.startswith(b"GET ") or data[head_end : head_end + 4] != b"\r\n\r\n":
        return False
    target_end = data.find(b" ", 4, head_end)
    if target_end < 0:
        return False
    route = routes.get(data[4:target_end].partition(b"?")[0])
    if route is None:
        return False
    request = parse_head(data[:head_end])
    if request is None or not asks_upgrade(request):
        return False
    key = plain_key(request)
    if key is not None:
        lean = LeanConnection(
            transport,
            max_size=route.max_size,
            max_queue=route.max_queue,
            close_timeout=route.close_timeout,
            send_limit=route.send_limit,
        )
        transport.set_protocol(lean)
        if len(data) > head_end + 4:  # frames before the 101: parsed once it is sent
            lean.data_received(data[head_end + 4 :])
        task = lean.loop.create_task(
            open_lean(lean, request, key, route=route, server=server, front=front)
        )
        server.handler_tasks.add(task)
        return True
    conn = BoundedServerConnection(
        new_protocol(route.max_size),
        server,
        ping_interval=route.ping_interval,
        ping_timeout=route.ping_timeout,
        close_timeout=route.close_timeout,
        max_queue=route.max_queue,
    )
    conn.send_limit = route.send_limit
    conn.request = request
    conn.request_rcvd = done_future()
    transport.set_protocol(conn)
    conn.connection_made(transport)  # starts the handler task (websockets' Server.handler)
    if len(data) > head_end + 4:  # frames before the 101: websockets would queue them too
        conn.data_received(data[head_end + 4 :])
    return True


def new_protocol(max_size: int | None) -> ServerProtocol:
    """websockets' server protocol as it is once it has parsed the request: its parser in
    the frame loop, the state ``CONNECTING`` until the 101 is sent."""
    protocol = ServerProtocol(max_size=max_size, state=State.OPEN)  # the parser: frames
    protocol.state = State.CONNECTING
    return protocol


def accept(
    connection: ServerConnection, request: Request, *, date: bytes, server_header: str | None
) -> bool:
    """Queue the 101 of a request that passes websockets' RFC 6455 checks; False (nothing
    queued) when it does not: answer ``connection.protocol.accept(request)`` then."""
    protocol = connection.protocol
    accept_header = plain_accept(protocol, request)
    if accept_header is None:
        try:  # no extension, no subprotocol
            accept_header, _, _ = protocol.process_request(request)
        except InvalidHandshake:
            return False
    protocol.writes.insert(0, switching(accept_header, date=date, server_header=server_header))
    protocol.state = State.OPEN
    return True


def send_queued(connection: ServerConnection) -> None:
    """Write what the connection's protocol has queued (the 101 and the first frames) in one
    socket write."""
    transport = connection.transport
    protocol = connection.protocol
    chunks = protocol.writes
    if transport.is_closing() or not chunks:
        return
    if all(chunks):
        protocol.writes = []
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    else:  # a half-close queued: websockets' own way
        connection.send_data()


async def handshake(
    connection: ServerConnection,
    request: Request,
    process_request: ProcessRequest,
    *,
    date: bytes,
    server_header: str | None,
) -> None:
    """websockets' ``ServerConnection.handshake`` for a request the front parsed, with the
    same answers; a 101 is written at the end of this loop iteration, with the frames the
    handler queued by then (:func:`send_queued`)."""
    protocol = connection.protocol
    try:
        response = await process_request(connection, request)
    except Exception as exc:
        protocol.handshake_exc = exc
        connection.logger.error("process_request failed", exc_info=True)
        response = protocol.reject(*_FAILED)
    if response is None:
        if not connection.server.is_serving():
            response = protocol.reject(*_SHUTTING_DOWN)
        elif protocol.state is not State.CONNECTING:
            return  # the connection was lost meanwhile
        elif accept(connection, request, date=date, server_header=server_header):
            connection.loop.call_soon(send_queued, connection)
            return
        else:
            response = protocol.accept(request)  # the RFC 6455 check that failed: its answer
    if server_header is not None:
        response.headers["Server"] = server_header
    if protocol.state is State.CONNECTING:
        async with connection.send_context(expected_state=State.CONNECTING):
            protocol.send_response(response)


async def open_lean(
    conn: LeanConnection,
    request: Request,
    key: str,
    *,
    route: WsRoute,
    server: Server,
    front: FrontState,
) -> None:
    """The handler task of a :class:`LeanConnection`: websockets' ``handshake`` and
    ``Server.handler`` (front.py's ``_ws_lifecycle``) for a plain upgrade. The gateway's
    ``process_request`` answers first (its response, or 500 if it fails; 503 once the server
    closes); then the 101, written with the handler's first frames at the end of the loop
    iteration; then the handler, and the closing handshake when it returns (1000, or 1011
    if it failed)."""
    transport = conn.transport
    timer: openclock.TimerClock | None = openclock.TimerClock(
        conn.loop, front.open_timeout, transport.abort
    )
    try:
        token = openclock.OPEN_CLOCK.set(timer)  # pausable (openclock.paused)
        try:
            response = await _answer(conn, request, route.process_request, server)
        finally:
            # Nothing of the handshake stays for the connection's life: the request (its
            # headers, the token: ~3 KB), the clock in this task's context, its reset token.
            openclock.OPEN_CLOCK.reset(token)
            del request, token
        if conn.state is not State.CONNECTING:
            return  # lost meanwhile, or the open timed out
        if response is not None:
            if front.server_header is not None:
                response.headers["Server"] = front.server_header
            transport.write(response.serialize())
            transport.close()
            return
        if timer is not None:  # always (mypy: not narrowed across the await)
            timer.cancel()
        timer = None  # nor the clock (and its transport.abort) in this frame
        conn.accept(switching(accept_key(key), date=front.date, server_header=front.server_header))
        conn.loop.call_soon(conn.send_data)  # the 101 with the hello: one socket write
        server.all_connections.add(as_any(conn))
        try:
            try:
                await route.handler(conn)
            except Exception:
                logger.error("connection handler failed", exc_info=True)
                await conn.close(1011)
            else:
                await conn.close()
        finally:
            server.all_connections.discard(as_any(conn))
    finally:
        if timer is not None:
            timer.cancel()
        task = asyncio.current_task()
        if task is not None:
            server.handler_tasks.discard(task)


async def _answer(
    conn: LeanConnection,
    request: Request,
    process_request: ProcessRequest | None,
    server: Server,
) -> Response | None:
    """The handshake's answer, as websockets' ``handshake`` gives it: ``process_request``'s
    response (500 if it fails), 503 once the server closes, or None: accept."""
    response: Response | None = None
    if process_request is not None:
        try:
            response = await process_request(conn, request)
        except Exception:
            logger.error("process_request failed", exc_info=True)
            response = ServerProtocol().reject(*_FAILED)
    if response is None and not server.is_serving():
        response = ServerProtocol().reject(*_SHUTTING_DOWN)
    return response
