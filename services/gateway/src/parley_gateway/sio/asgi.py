"""Long-polling requests to ``/socket.io/`` as an ASGI layer in front of the HTTP API app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from websockets.datastructures import Headers

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode
from parley_gateway.sio.endpoint import PATH, SocketIO

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _respond(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def with_socketio(sio: SocketIO, app: ASGIApp) -> ASGIApp:
    """``app`` with ``/socket.io/`` HTTP requests (polling) answered by ``sio``."""
    limit = sio.settings.max_frame_bytes

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                error = envelopes.fail(
                    ErrorCode.PAYLOAD_TOO_LARGE, f"a polling request carries at most {limit} bytes"
                )
                await _respond(send, 413, "application/json", jsonutil.dumps(error))
                return
            if not message.get("more_body"):
                break
        headers = Headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])
        )
        query = scope.get("query_string", b"").decode("latin-1")
        status, ctype, out = await sio.http(scope["method"], query, headers, bytes(body))
        await _respond(send, status, ctype, out)

    return asgi
