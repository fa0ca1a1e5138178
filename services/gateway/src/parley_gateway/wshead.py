"""The upgrade request's head, read without websockets' generator parser (wsopen.py opens
the connection from it): parsed once with websockets' own grammar, the plain-upgrade checks
websockets would make, and the 101's head.

- :func:`parse_head`: the head parsed once, with websockets' own grammar (its header name
  and value regexes and limits) into websockets' ``Request``; a head it would not accept the
  same way (bare LF, obs-fold, a non-ASCII target, a body, HTTP/1.0, too long...) returns
  None and takes the unchanged path (websockets parses it and answers its own error);
- :func:`plain_key`: the key of the plain upgrade nearly every client sends (one
  ``Connection: upgrade``, ``Upgrade: websocket``, a canonical key, version 13, at most one
  Origin, no subprotocol), checked without websockets' header parsers; :func:`plain_accept`
  applies it to websockets' ``ServerProtocol`` as its ``process_request`` would;
- :func:`switching`: the 101 response's head.

``test_wsopen.py`` compares each with websockets' own on valid and invalid heads.
"""

from __future__ import annotations

import functools
import re

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.server import ServerProtocol
from websockets.utils import accept_key

# A header line: a token, a colon, a value with its surrounding spaces and tabs stripped
# (websockets.http11's grammar: RFC 9110 token; field value: VCHAR, SP, HTAB, obs-text).
# The value is runs of visible bytes separated by runs of blanks: no backtracking blow-up.
_FIELD = re.compile(
    rb"([-!#$%&\'*+.^_`|~0-9a-zA-Z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)


class ParsedRequest(Request):
    """A request the front parsed itself (``Front.open_parsed``): open with ``wsopen.handshake``."""


def parse_head(head: bytes) -> ParsedRequest | None:
    """The request of an upgrade head (``head``: up to and without the blank line that ends
    it, CRLF line ends), parsed as websockets' ``Request.parse`` would; None for any head that
    is not a plain ``GET ... HTTP/1.1`` that websockets would parse to the same request."""
    lines = head.split(b"\r\n")
    if len(lines) > MAX_NUM_HEADERS + 1:
        return None
    line = lines[0]
    if len(line) + 2 > MAX_LINE_LENGTH or b"\n" in line:
        return None
    method, _, rest = line.partition(b" ")
    raw_path, _, protocol = rest.partition(b" ")
    if method != b"GET" or protocol != b"HTTP/1.1" or not raw_path.isascii():
        return None
    # websockets' Headers filled as set_insecure does (test_wsopen compares the result with
    # websockets' own parse): Headers() would run MutableMapping.update for nothing.
    headers = Headers.__new__(Headers)
    by_name: dict[str, list[str]] = {}
    items: list[tuple[str, str]] = []
    headers._dict = by_name
    headers._list = items
    field = _FIELD.fullmatch
    for line in lines[1:]:
        if len(line) + 2 > MAX_LINE_LENGTH:
            return None
        match = field(line)
        if match is None:
            return None
        name = match[1].decode("ascii")
        value = match[2].decode("iso-8859-1")
        by_name.setdefault(name.lower(), []).append(value)
        items.append((name, value))
    if "Transfer-Encoding" in headers or "Content-Length" in headers:
        return None  # websockets refuses a body (or accepts "0"): let it answer
    return ParsedRequest(raw_path.decode("ascii"), headers, "GET", "HTTP/1.1")


def asks_upgrade(request: Request) -> bool:
    """Whether the request asks for ``Upgrade: websocket`` (the front's routing rule; the
    handshake checks the value exactly)."""
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def plain_key(request: Request) -> str | None:
    """The ``Sec-WebSocket-Key`` of the plain upgrade nearly every client sends, checked
    without websockets' header parsers: one ``Connection: upgrade``, one ``Upgrade:
    websocket`` (any case), one key of 16 bytes in canonical base64, one version 13, at most
    one Origin and no ``Sec-WebSocket-Protocol``. None for any other request: websockets'
    own checks answer it (``test_wsopen.py`` compares both on valid and invalid heads)."""
    headers = request.headers
    connection = headers.get_all("Connection")
    upgrade = headers.get_all("Upgrade")
    key = headers.get_all("Sec-WebSocket-Key")
    if (
        len(connection) != 1
        or connection[0].lower() != "upgrade"
        or len(upgrade) != 1
        or upgrade[0].lower() != "websocket"
        or len(key) != 1
        or not _KEY.fullmatch(key[0])
        or headers.get_all("Sec-WebSocket-Version") != ["13"]
        or len(headers.get_all("Origin")) > 1
        or "Sec-WebSocket-Protocol" in headers
    ):
        return None
    return key[0]


def plain_accept(protocol: ServerProtocol, request: Request) -> str | None:
    """``Sec-WebSocket-Accept`` of a plain upgrade (:func:`plain_key`), with the same effect
    on ``protocol`` as ``ServerProtocol.process_request`` (for a server without extensions
    and subprotocols, as the gateway's); None for any other request."""
    if (
        protocol.available_extensions
        or protocol.available_subprotocols
        or protocol.origins is not None
    ):
        return None
    key = plain_key(request)
    if key is None:
        return None
    origin = request.headers.get_all("Origin")
    protocol.origin = origin[0] if origin else None  # type: ignore[assignment]
    protocol.extensions = []
    protocol.subprotocol = None
    return accept_key(key)


def switching(accept_header: str, *, date: bytes, server_header: str | None) -> bytes:
    """The 101 response's head."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
        % (date, accept_header.encode(), _server_line(server_header))
    )


@functools.cache
def _server_line(server_header: str | None) -> bytes:
    return f"Server: {server_header}\r\n".encode() if server_header else b""
