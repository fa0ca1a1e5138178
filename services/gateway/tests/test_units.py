"""Plain logic of the gateway, no network: ordering of durable events, the rate limiter."""

from __future__ import annotations

import pytest

from parley_gateway.ordering import Sequencer
from parley_gateway.ratelimit import TokenBucket


def _seqs(out: object) -> list[int]:
    return [s for s, _ in out.deliver]  # type: ignore[attr-defined]


def test_in_order_frames_pass_straight_through() -> None:
    seq = Sequencer(last=0)
    assert _seqs(seq.push(1, b"1")) == [1]
    assert _seqs(seq.push(2, b"2")) == [2]
    assert seq.missing() is None


def test_duplicates_are_dropped() -> None:
    seq = Sequencer(last=5)
    out = seq.push(5, b"5")
    assert out.duplicate and not out.deliver
    out = seq.push(3, b"3")
    assert out.duplicate
    assert _seqs(seq.push(6, b"6")) == [6]


def test_a_gap_waits_then_is_filled_in_order() -> None:
    seq = Sequencer(last=1)
    assert _seqs(seq.push(4, b"4")) == []
    assert _seqs(seq.push(3, b"3")) == []
    assert seq.missing() == (1, 2)  # fetch after 1 up to 2
    out = seq.fill([(2, b"2")])
    assert _seqs(out) == [2, 3, 4]
    assert seq.last == 4 and seq.missing() is None
    # a late live copy of 2 is a duplicate now
    assert seq.push(2, b"2").duplicate


def test_fill_with_duplicates_and_disorder() -> None:
    seq = Sequencer(last=0)
    seq.push(5, b"5")
    out = seq.fill([(3, b"3"), (1, b"1"), (2, b"2"), (4, b"4"), (1, b"1")])
    assert _seqs(out) == [1, 2, 3, 4, 5]


def test_start_sets_the_point_and_drops_what_it_covers() -> None:
    seq = Sequencer()
    seq.push(3, b"3")
    seq.push(5, b"5")
    seq.push(6, b"6")
    assert seq.last is None
    out = seq.start(4)
    assert _seqs(out) == [5, 6]
    assert seq.start(10).deliver == []  # only the first start counts


def test_skip_past_a_range_that_is_gone() -> None:
    seq = Sequencer(last=1)
    seq.push(5, b"5")
    assert _seqs(seq.skip_to(4)) == [5]


def test_too_many_pending_asks_for_a_fetch_now() -> None:
    seq = Sequencer(last=0, max_pending=3)
    for s in (3, 4, 5):
        assert seq.push(s, b"").gap is None
    assert seq.push(6, b"").gap == (0, 2)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0)  # burst 4
    t = bucket.stamp
    assert [bucket.take(t) for _ in range(5)] == [True, True, True, True, False]
    assert bucket.take(t + 0.5)  # one token back after half a second
    assert not bucket.take(t + 0.5)


def test_timestamps_keep_the_protocol_format() -> None:
    import re
    from datetime import UTC, datetime, timedelta, timezone

    from parley_contract.timeutil import iso, now_iso, utcnow

    assert iso(datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)) == "2026-01-01T10:00:00Z"
    assert iso(datetime(2026, 1, 1, 10, 0, 0, 5, tzinfo=UTC)) == "2026-01-01T10:00:00.000Z"
    assert iso(datetime(2026, 1, 1, 10, 0, 0, 123999, tzinfo=UTC)) == "2026-01-01T10:00:00.123Z"
    plus2 = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 1, 1, 1, 30, 0, 450000, tzinfo=plus2)) == "2025-12-31T23:30:00.450Z"
    before = iso(utcnow())
    now = now_iso()
    after = iso(utcnow())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now)
    assert before[:19] <= now[:19] <= after[:19]


def test_frame_text_matches_websockets() -> None:
    from websockets.frames import Frame, Opcode

    from parley_gateway.conn import frame_text

    for n in (0, 1, 125, 126, 127, 1000, 65535, 65536, 70000):
        payload = b"x" * n
        expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
        assert frame_text(payload) == expected, n


def test_a_new_epoch_resets_the_order_and_delivers_the_reused_seq() -> None:
    """Issue 11: the store's history was found shorter than the seqs handed out (say it ends
    at 96 after 106 were delivered): epoch 1 begins at 97, which must not be dropped."""
    seq = Sequencer(last=0)
    for s in range(1, 107):
        seq.push(s, b"old")
    assert seq.last == 106
    dup = seq.push(97, b"new", 1)  # would be a duplicate in epoch 0
    assert dup.reset and dup.deliver == [(97, b"new")] and seq.epoch == 1
    assert seq.push(98, b"new", 1).deliver == [(98, b"new")]
    stale = seq.push(107, b"late old", 0)  # from before: void
    assert stale.duplicate and not stale.deliver
    assert seq.push(98, b"again", 1).duplicate
    assert seq.fill([(99, b"fetched")]).deliver == [(99, b"fetched")]


def test_main_freezes_the_startup_heap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``python -m parley_gateway`` moves what the imports built out of the collector's
    sight before serving (a full collection during a connect burst scans the connections
    only)."""
    import gc

    from parley_gateway import __main__ as entry

    seen: list[tuple[int, tuple[int, int, int]]] = []
    monkeypatch.setattr(
        entry, "run", lambda *a, **k: seen.append((gc.get_freeze_count(), gc.get_threshold()))
    )
    gc.unfreeze()
    before = gc.get_threshold()
    try:
        entry.main()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen and seen[0][0] > 10_000
    # ... and the collections made rarer (a reconnect storm's full collections, issue 16):
    # the first generation's threshold is PARLEY_GATEWAY_GC_GEN0, 10,000 unless set
    assert seen[0][1] == (10_000, before[1], before[2]) and before[0] < 10_000
    monkeypatch.setenv("PARLEY_GATEWAY_GC_GEN0", "2500")
    try:
        entry.main()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen[1][1] == (2_500, before[1], before[2])
    monkeypatch.setenv("PARLEY_GATEWAY_GC_GEN0", "0")  # 0 would turn the collector off
    with pytest.raises(SystemExit):
        entry.main()
    assert "PARLEY_GATEWAY_GC_GEN0" in caplog.text
    assert gc.isenabled() and gc.get_threshold() == before and len(seen) == 2
