"""parley_client.ordering: each durable event handed out once, in order; a reset's epoch
restarts a conversation, frames from before it are dropped (docs/protocol.md 4.1)."""

from __future__ import annotations

from parley_client.frames import Frame
from parley_client.ordering import Ordering


def _frame(seq: int | None, epoch: int | None = None, cid: str | None = "c1") -> Frame:
    return Frame(event="message:new", data=None, conversation_id=cid, seq=seq, epoch=epoch)


def test_repeats_are_dropped_and_counted() -> None:
    order = Ordering()
    handed = [f.seq for f in map(_frame, [1, 2, 2, 1, 3]) if order.accept(f)]
    assert handed == [1, 2, 3]
    assert order.duplicates_dropped == 2
    assert order.last_seq("c1") == 3 and order.last_seq("other") == 0


def test_a_higher_epoch_restarts_the_conversation_and_older_frames_are_dropped() -> None:
    order = Ordering()
    assert [order.accept(_frame(s, epoch=1)) for s in (1, 2, 3)] == [True, True, True]
    assert order.accept(_frame(1, epoch=2))  # the reset: seq 1 again, a new epoch
    assert not order.accept(_frame(4, epoch=1))  # from before the reset
    assert order.accept(_frame(2, epoch=2))
    assert order.last_seq("c1") == 2 and order.duplicates_dropped == 1


def test_frames_without_a_conversation_or_seq_always_pass() -> None:
    order = Ordering()
    assert order.accept(_frame(None, cid=None))
    assert order.accept(_frame(None)) and order.accept(_frame(None))
    assert order.duplicates_dropped == 0
