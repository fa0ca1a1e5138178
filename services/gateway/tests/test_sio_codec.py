"""The Socket.IO / Engine.IO codec of /socket.io/ (hostile input: PacketError, never a crash)."""

from __future__ import annotations

import pytest

from parley_contract import jsonutil
from parley_gateway.conn import frame_text
from parley_gateway.sio import codec
from parley_gateway.sio.session import offset_of, packet_of, parse_offset, unframe


def test_decode_event_with_ack_and_namespace() -> None:
    p = codec.decode_sio('212["message:send",{"a":1}]')
    assert (p.type, p.nsp, p.id, p.data) == (2, "/", 12, ["message:send", {"a": 1}])
    p = codec.decode_sio('0/admin,{"token":"t"}')
    assert (p.type, p.nsp, p.id, p.data) == (0, "/admin", None, {"token": "t"})
    p = codec.decode_sio("0")
    assert (p.type, p.nsp, p.data) == (0, "/", None)
    p = codec.decode_sio("1/admin")
    assert (p.type, p.nsp) == (1, "/admin")
    p = codec.decode_sio('52-3["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert (p.type, p.attachments, p.id, p.data[0]) == (5, 2, 3, "m")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "9",
        "5[]",
        "5x-[]",
        '2["a",',
        "2" + "1" * 17 + "[]",
        "2/" + "n" * 200 + ",[]",
        "29" * 10,
    ],
)
def test_decode_rejects(text: str) -> None:
    with pytest.raises(codec.PacketError):
        codec.decode_sio(text)


@pytest.mark.parametrize(
    "text",
    [
        '42["typing:start",{"conversationId":"c"}]',
        '4212["message:send",{"a":1}]',
        "42",
        "427",
        '420["x"]',
        "42{}",
        '42["a",',
        "42" + "1" * 16 + "[]",
        "42" + "1" * 17 + "[]",
        "42" + "9" * 16 + "[]",
        "42\u0661[]",  # a non-ASCII digit (ARABIC-INDIC ONE) is not an ack id
        '42 ["a"]',
    ],
)
def test_decode_event_is_decode_sio_for_events(text: str) -> None:
    """The command fast path (``decode_event``) reads what ``decode_sio`` reads, or refuses
    what it refuses with the same message (``decode_sio`` takes it without Engine.IO's 4)."""
    try:
        p = codec.decode_sio(text[1:])
    except codec.PacketError as exc:
        with pytest.raises(codec.PacketError, match=str(exc)):
            codec.decode_event(text)
        return
    assert (p.type, p.nsp) == (codec.SIO_EVENT, "/")
    assert codec.decode_event(text) == (p.id, p.data)


def test_encode() -> None:
    assert codec.encode_sio(0, {"sid": "s"}) == b'40{"sid":"s"}'
    assert codec.encode_sio(4, {"message": "m"}, nsp="/x") == b'44/x,{"message":"m"}'
    assert codec.ack_packet(7, {"success": True}) == b'437[{"success":true}]'
    assert codec.encode_payload([b"2", b"42[1]"]) == b"2\x1e42[1]"
    assert codec.decode_payload("2\x1e42[1]") == ["2", "42[1]"]


@pytest.mark.parametrize("size", [10, 200, 70_000])
def test_event_packet_from_a_framed_event(size: int) -> None:
    frame = {"event": "message:new", "data": {"c": "x" * size}, "conversationId": "c1", "seq": 3}
    wire = frame_text(jsonutil.dumps(frame))
    packet = packet_of(unframe(wire))
    assert packet is not None and packet.startswith(b"42")
    assert jsonutil.loads(packet[2:]) == ["message:new", frame, "c1:3"]
    ephemeral = {"event": "typing:start", "data": {}}
    assert jsonutil.loads((packet_of(jsonutil.dumps(ephemeral)) or b"")[2:]) == [
        "typing:start",
        ephemeral,
    ]
    assert packet_of(b"[1]") is None and packet_of(b"{") is None


def test_offsets() -> None:
    assert parse_offset("conv_1:12", 100) == {"conv_1": 12}
    assert parse_offset("a:3,b-2:7,c_3:0", 100) == {"a": 3, "b-2": 7, "c_3": 0}
    bads = (None, 3, "", "c:", ":3", "c:-1", "c:1e3", "c:" + "9" * 20, "x" * 300, "a:1,")
    for bad in (*bads, "a.b:3", "a:1,,b:2", "a:1;b:2", "a:1,b:2,c:3"):
        assert parse_offset(bad, 2) is None, bad
    assert parse_offset(",".join(f"c{i}:{i}" for i in range(101)), 100) is None


def test_the_offset_names_every_conversation_of_the_connection() -> None:
    """Issue 14: socket.io-client sends back the last offset it got; it must name all of
    the connection's conversations (a recovery after a crash resumes each exactly)."""
    frame = {"event": "message:new", "data": {}, "conversationId": "a", "seq": 5}
    wire = jsonutil.dumps(frame)
    assert offset_of("a", 5) == "a:5" == offset_of("a", 5, {"a": 5})
    joined = {"b": 9, "a": 4, "c": 1}
    packet = packet_of(wire, joined)
    assert packet is not None
    offset = jsonutil.loads(packet[2:])[2]
    assert offset.startswith("a:5,")  # the event's own position, not the stale one
    assert parse_offset(offset, 100) == {"a": 5, "b": 9, "c": 1}
    # The event's conversation not joined yet (a join's replay): named too.
    assert parse_offset(jsonutil.loads((packet_of(wire, {"b": 2}) or b"")[2:])[2], 9) == {
        "a": 5,
        "b": 2,
    }
