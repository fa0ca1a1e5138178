"""Client byte streams for the differential fuzzing of the lean WebSocket connection
(test_wsconn_fuzz.py): Hypothesis strategies, and the model of where the lean connection
and websockets fail at different times (:meth:`Wire.early_failure`).

A stream is the handshake head then frames: data messages (text, valid or not, UTF-8 split
anywhere across fragments; binary), fragmented or not, with pings and pongs between the
fragments; pings, pongs, closes (valid and invalid codes, UTF-8 and non-UTF-8 reasons,
1-byte payloads); and raw frames with any opcode (reserved ones too), reserved bits,
unmasked, 7/16/64-bit lengths (non-minimal encodings too), control frames too long or
fragmented, and headers declaring more than ``max_size`` (up to 2**64 - 1) with no payload.
The bytes are then cut into chunks at random offsets (inside the head, inside a frame's
header or payload, frames before the 101), each chunk one TCP write.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from .test_wsconn import HEAD, MAX_SIZE, close_payload

# What a frame asks of the server: an answer (an echo, a pong), a close, or nothing.
DATA, PING, CLOSE, OTHER = "data", "ping", "close", "other"


@dataclass
class Wire:
    """A client stream: its bytes, and where each frame ends with what it asks for."""

    data: bytearray = field(default_factory=lambda: bytearray(HEAD))
    ends: list[tuple[int, str]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    eof: bool = False  # ends with a half-close (else a close frame, unless closed before)
    truncated: bool = False  # its last frame cut short (then it ends with a half-close)

    def add(self, raw: bytes, kind: str) -> None:
        self.data += raw
        self.ends.append((len(self.data), kind))
        self.raws.append(raw)

    def early_failure(self) -> tuple[int, int, bool] | None:
        """The first frame the two connections fail on at different times, by a simple
        model of a connection: its start, its end, and whether the lean one fails on its
        header (True) or on its last byte (False, a text message of invalid UTF-8); None
        if the stream ends, or fails first on a frame they fail on alike."""
        frag_op, parts = -1, b""
        whole = len(self.raws) - self.truncated
        for raw, (end, _) in zip(self.raws[:whole], self.ends, strict=False):
            b0, b1 = raw[0], raw[1]
            opcode, fin, n, pos = b0 & 0x0F, b0 & 0x80, b1 & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(raw[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(raw[2:10], "big"), 10
            current = len(parts) if frag_op >= 0 else 0
            if opcode not in (0, 1, 2, 8, 9, 10) or not b1 & 0x80 or n > MAX_SIZE - current:
                return None  # failed alike on the header
            if b0 & 0x70 or (opcode >= 8 and (n > 125 or not fin)):
                return end - len(raw), end, True
            if opcode == 8 or ((opcode == 0) != (frag_op >= 0) and opcode < 8):
                return None  # closed or failed alike on the whole frame
            if opcode >= 8:
                continue
            mask = raw[pos : pos + 4]
            parts += bytes(b ^ mask[i % 4] for i, b in enumerate(raw[pos + 4 :]))
            frag_op = frag_op if opcode == 0 else opcode
            if not fin:
                continue
            with contextlib.suppress(UnicodeDecodeError):
                if frag_op == 1:
                    parts.decode()
                frag_op, parts = -1, b""
                continue
            return end - len(raw), end, False
        return None


def encode(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x00\x00\x00\x00",
    width: int = 0,
    declared: int | None = None,
) -> bytes:
    """A client frame: ``width`` 0 for the minimal length encoding, else 7, 16 or 64 bits;
    ``declared`` a length other than the payload's (its header only is sent then)."""
    n = len(payload) if declared is None else declared
    if not width:
        width = 7 if n < 126 else 16 if n < 0x10000 else 64
    b0 = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask is not None else 0
    if width == 7:
        head = bytes((b0, bit | n))
    elif width == 16:
        head = bytes((b0, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, bit | 127)) + struct.pack("!Q", n)
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head if declared is not None else head + payload


# ---------------------------------------------------------------------------- strategies

masks = st.binary(min_size=4, max_size=4)
small = st.binary(max_size=20)
sizes = st.one_of(
    st.integers(0, 20), st.integers(120, 130), st.integers(MAX_SIZE - 8, MAX_SIZE + 4)
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=12).map(str.encode)
bad_utf8 = st.sampled_from(
    [b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xf0"]
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["text", "text", "bad", "sized"]))
    if kind == "text":
        return draw(texts)
    if kind == "bad":
        return draw(texts) + draw(bad_utf8) + draw(texts)
    return draw(st.sampled_from([b"a", b"\xe2\x82\xac"])) * (draw(sizes) // 3 or 1)


CODES = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1011, 1012, 1014, 1015, 1016]
CODES += [0, 999, 2999, 3000, 4999, 5000, 65535]


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["empty", "one byte", "code", "code", "long"]))
    if kind == "empty":
        return b""
    if kind == "one byte":
        return draw(st.binary(min_size=1, max_size=1))
    code = draw(st.sampled_from(CODES) | st.integers(0, 65535))
    reason = draw(texts | st.builds(bytes.__add__, texts, bad_utf8))
    if kind == "long":
        reason = b"r" * draw(st.integers(118, 126))
    return close_payload(code, reason)


def control(opcode: int, payload: bytes, mask: bytes) -> tuple[bytes, str]:
    kind = {9: PING, 8: CLOSE}.get(opcode, OTHER)
    return encode(opcode, payload, mask=mask), kind


@st.composite
def controls(draw: st.DrawFn) -> tuple[bytes, str]:
    opcode = draw(st.sampled_from([9, 9, 10, 8]))
    payload = draw(close_payloads()) if opcode == 8 else draw(small)
    return control(opcode, payload, draw(masks))


@st.composite
def messages(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """A text or binary message, in fragments split anywhere (mid-character too), with
    control frames between them."""
    opcode = draw(st.sampled_from([1, 1, 2]))
    payload = draw(payloads())
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out: list[tuple[bytes, str]] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        out.append((encode(0 if i else opcode, part, fin=last, mask=draw(masks)), DATA))
        if not last and draw(st.integers(0, 3)) == 0:
            out.append(draw(controls()))
    # a data frame asks for an echo when it ends a message
    return [(raw, OTHER if kind == DATA and not raw[0] & 0x80 else kind) for raw, kind in out]


FLAWS = ["none", "opcode", "rsv", "unmasked", "huge", "control too long", "fragmented control"]


@st.composite
def raw_frames(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """A frame with one flaw (or none, or any header at all): a reserved opcode, reserved
    bits, unmasked, a declared length beyond ``max_size`` (up to 2**64 - 1, no payload), a
    control frame too long or fragmented; any length width (non-minimal ones too)."""
    flaw = draw(st.sampled_from([*FLAWS, "any"]))
    opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]))
    fin, rsv, declared = True, 0, None
    mask: bytes | None = draw(masks)
    if opcode < 8:
        fin = draw(st.booleans())
    if flaw == "opcode":
        opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
    elif flaw == "rsv":
        rsv = draw(st.sampled_from([0x10, 0x20, 0x40, 0x70]))
    elif flaw == "unmasked":
        mask = None
    elif flaw in {"control too long", "fragmented control"}:
        opcode = draw(st.sampled_from([8, 9, 10]))
        fin = flaw == "control too long"
    elif flaw == "any":
        opcode, fin = draw(st.integers(0, 15)), draw(st.booleans())
        rsv = draw(st.sampled_from([0, 0x10, 0x20, 0x40, 0x70]))
        mask = draw(st.none() | masks)
    if flaw == "huge":
        declared = draw(
            st.sampled_from([MAX_SIZE + 1, 0xFFFF, 0x10000, 2**63, 2**64 - 1])
            | st.integers(MAX_SIZE + 1, 2**64 - 1)
        )
        payload = b""
    elif flaw == "control too long":
        payload = b"c" * draw(st.integers(126, 130) | st.integers(126, MAX_SIZE))
    elif opcode == 8:
        payload = draw(close_payloads())
    else:
        payload = draw(payloads())
    n = len(payload) if declared is None else declared
    widths = [w for w in (0, 7, 16, 64) if w in (0, 64) or n < (126 if w == 7 else 0x10000)]
    width = draw(st.sampled_from(widths))
    raw = encode(opcode, payload, fin=fin, rsv=rsv, mask=mask, width=width, declared=declared)
    kind = OTHER
    if opcode in (0, 1, 2) and fin:
        kind = DATA
    elif opcode == 9:
        kind = PING
    elif opcode == 8:
        kind = CLOSE
    return [(raw, kind)]


# More messages in one read than the queue holds (16: reading pauses, then resumes).
bursts = st.lists(texts, min_size=10, max_size=40).map(
    lambda bodies: [(encode(1, body, mask=b"abcd"), DATA) for body in bodies]
)
items = st.one_of(messages(), controls().map(lambda c: [c]), raw_frames())
items = st.one_of(items, messages(), bursts)


@st.composite
def streams(draw: st.DrawFn) -> tuple[Wire, list[int]]:
    """The stream's bytes and the offsets where it is cut into writes."""
    wire = Wire()
    for item in draw(st.lists(items, min_size=1, max_size=6)):
        for raw, kind in item:
            wire.add(raw, kind)
    ending = draw(st.sampled_from(["close frame", "close frame", "eof", "truncated"]))
    wire.eof = ending != "close frame"
    early, last = wire.early_failure(), wire.raws[-1]
    # (not a frame the lean connection fails on by its header, which websockets waits for)
    on_its_header = early is not None and early[2] and early[1] == len(wire.data)
    if ending == "truncated" and len(last) > 1 and not on_its_header:
        keep = draw(st.integers(1, len(last) - 1))
        del wire.data[len(wire.data) - len(last) + keep :]
        wire.raws[-1] = last[:keep]
        wire.ends[-1] = (len(wire.data), OTHER)
        wire.truncated = True
    size = len(wire.data)
    cuts = draw(
        st.lists(
            st.integers(1, size - 1)
            | st.sampled_from([len(HEAD) - 1, len(HEAD), len(HEAD) + 1, len(HEAD) + 2]),
            max_size=8,
            unique=True,
        )
    )
    return wire, sorted(c for c in cuts if 0 < c < size)
