"""Answer a plain HTTP GET from the ``websockets`` server with an in-process ASGI app.

The public port is a lean ``websockets`` server (about 12-13 KB per idle connection, against
about 30 KB for uvicorn's WebSocket stacks, see the project's measurements); every request that
is not a WebSocket upgrade is handed here, in ``process_request``, to the FastAPI app, so one
origin serves ``/ws``, ``/v1/...``, ``/docs`` and the web UI. Only GET exists on that surface
(the websockets HTTP parser accepts nothing else), and requests carry no body.

A few lines instead of httpx's ASGITransport: it avoids a runtime dependency and a copy.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


async def call_asgi(
    app: ASGIApp,
    request: Request,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int],
    method: str = "GET",
) -> Response:
    path, _, query = request.path.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET" if method == "HEAD" else method,  # HEAD: GET without the body
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in request.headers.raw_items()
        ],
        "client": client,
        "server": server,
        "state": {},
    }
    status = 500
    headers: list[tuple[str, str]] = []
    body = bytearray()
    sent_request = False

    async def receive() -> Message:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The client stays until the response is complete (responses that listen for a
        # disconnect while streaming would otherwise stop at once).
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.extend(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
            )
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    out = Headers([(k, v) for k, v in headers if k.lower() not in {"content-length", "connection"}])
    out["Content-Length"] = str(len(body))
    if method == "HEAD":
        body.clear()
    out["Connection"] = "close"
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return Response(status, phrase, out, bytes(body))
