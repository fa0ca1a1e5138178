"""Engine.IO v4 and Socket.IO v5 packets, text only (what ``/socket.io/`` speaks).

Engine.IO packet: one type digit then the data (``4`` message, ``2`` ping...); a polling
payload joins packets with the record separator ``\\x1e``. Socket.IO packet (inside an Engine.IO
message): ``<type>[<nsp>,][<ack id>][<JSON>]``.

Own codec rather than python-socketio's ``Packet`` classes: the gateway frames every event
once for all its receivers, which needs the packet built from the event's JSON bytes as they
came off NATS (``event_packet``); the library re-encodes data with ``json.dumps`` per packet,
decodes leniently, and would bring python-engineio, bidict and simple-websocket for about 60
lines. The real ``socket.io-client`` drives every path of this module in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley_contract import jsonutil

# Engine.IO packet types.
EIO_OPEN = "0"
EIO_CLOSE = "1"
EIO_PING = "2"
EIO_PONG = "3"
EIO_MESSAGE = "4"
EIO_UPGRADE = "5"
EIO_NOOP = "6"
RECORD_SEPARATOR = "\x1e"

# Socket.IO packet types.
SIO_CONNECT = 0
SIO_DISCONNECT = 1
SIO_EVENT = 2
SIO_ACK = 3
SIO_CONNECT_ERROR = 4
SIO_BINARY_EVENT = 5
SIO_BINARY_ACK = 6

_DIGITS = frozenset("0123456789")
MAX_ACK_ID = 2**53  # socket.io-client counts from 0; anything beyond a JS safe integer is bad


class PacketError(ValueError):
    """A packet that does not follow the protocol (answered with a clear error)."""


@dataclass(slots=True)
class SioPacket:
    type: int
    nsp: str = "/"
    id: int | None = None
    data: Any = None
    attachments: int = 0  # binary packets only


def decode_sio(text: str) -> SioPacket:
    """One Socket.IO packet (the data of an Engine.IO message). Strict: raises PacketError."""
    if not text or not text[0].isdigit():
        raise PacketError("a Socket.IO packet starts with its type")
    ptype = int(text[0])
    if ptype > SIO_BINARY_ACK:
        raise PacketError(f"unknown Socket.IO packet type {ptype}")
    i = 1
    attachments = 0
    if ptype in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
        # <type><attachments>-...: parsed so the server can answer the ack and skip the
        # attachments that follow (binary is refused, see packets.py).
        dash = text.find("-", 1, 8)
        if dash < 0 or not text[1:dash].isdigit() or not text[1:dash].isascii():
            raise PacketError("a binary packet starts with <type><attachments>-")
        attachments, i = int(text[1:dash]), dash + 1
    nsp = "/"
    if i < len(text) and text[i] == "/":
        end = text.find(",", i)
        if end < 0:
            nsp, i = text[i:], len(text)
        else:
            nsp, i = text[i:end], end + 1
        if len(nsp) > 128:
            raise PacketError("namespace too long")
    start = i
    while i < len(text) and text[i].isdigit() and text[i].isascii():
        i += 1
    ack: int | None = None
    if i > start:
        if i - start > 16:
            raise PacketError("ack id too long")
        ack = int(text[start:i])
        if ack >= MAX_ACK_ID:
            raise PacketError("ack id too large")
    data: Any = None
    if i < len(text):
        try:
            data = jsonutil.loads(text[i:])
        except ValueError:
            raise PacketError("invalid JSON in the packet") from None
    return SioPacket(ptype, nsp, ack, data, attachments)


def decode_event(text: str) -> tuple[int | None, Any]:
    """``42[<ack id>]<JSON>``, an EVENT of the default namespace (the command packets of a
    connected client): its ack id and arguments, the same checks as ``decode_sio`` without
    building a ``SioPacket``. The caller has seen ``42`` and no ``/`` after it."""
    i = 2
    n = len(text)
    while i < n and text[i] in _DIGITS:
        i += 1
    ack: int | None = None
    if i > 2:
        if i > 18:
            raise PacketError("ack id too long")
        ack = int(text[2:i])
        if ack >= MAX_ACK_ID:
            raise PacketError("ack id too large")
    if i == n:
        return ack, None
    try:
        return ack, jsonutil.loads(text[i:])
    except ValueError:
        raise PacketError("invalid JSON in the packet") from None


def encode_sio(ptype: int, data: Any = None, *, nsp: str = "/", ack: int | None = None) -> bytes:
    """A Socket.IO packet as the data of an Engine.IO message (``4`` prepended)."""
    out = EIO_MESSAGE + str(ptype)
    if nsp != "/":
        out += nsp + ","
    if ack is not None:
        out += str(ack)
    raw = out.encode()
    if data is not None:
        raw += jsonutil.dumps(data)
    return raw


def event_packet(event: bytes, frame: bytes, offset: bytes | None) -> bytes:
    """``42["<event>",<frame>(,"<offset>")]``: a server event built from the frame's bytes.

    ``event`` is the JSON string of the event name (quotes included), ``frame`` the JSON
    object sent on ``/ws``; ``offset`` (JSON string) is the connection-state-recovery offset
    socket.io-client keeps from the last argument of each event.
    """
    if offset is None:
        return b"42[" + event + b"," + frame + b"]"
    return b"42[" + event + b"," + frame + b"," + offset + b"]"


def ack_packet(ack: int, envelope: Any) -> bytes:
    """``43<id>[<envelope>]``: the reply to ``emit(event, data, ack)``."""
    return b"43" + str(ack).encode() + b"[" + jsonutil.dumps(envelope) + b"]"


def decode_payload(body: str) -> list[str]:
    """The Engine.IO packets of a polling POST body (``\\x1e``-separated)."""
    return body.split(RECORD_SEPARATOR)


def encode_payload(packets: list[bytes]) -> bytes:
    return b"\x1e".join(packets)
