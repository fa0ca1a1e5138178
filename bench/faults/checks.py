"""What a scenario's clients were acked, what the store kept, what each member was given.

- **lost**: an acked ``clientMessageId`` that the stored history does not have (or has under
  another seq than the one acked).
- **seq reused**: of the lost, those whose acked seq now holds another message.
- **stored twice**: a ``clientMessageId`` stored more than once, or two messages with one seq.
- **store gaps**: seqs missing between the first and the last stored message (only messages
  are written in these conversations once the load starts, so every seq is a message).
- **undelivered**: per member, stored messages (by ``_id``) it was never given (it joined before the
  first send and resumes with the protocol's ``session`` + ``since``).
- **duplicates / reorders / gaps seen**: per member, a message given twice, a seq older than
  one already given, a jump over seqs not given yet (counted as they arrive); a *seq
  conflict* is another message given under a seq already given (a seq handed out twice).
- **epoch changes / stale epoch**: per member, durable events with a higher epoch (the
  ordering restarts, protocol 4.1) and with a lower one (dropped); shown, not failures.
- **timed out / of which stored**: acked sends that got ``TIMEOUT`` first, and of those the
  ones the store already had before the last retry (its ``createdAt`` is earlier): a
  ``TIMEOUT`` whose write happened; shown, not failures (retrying is safe).
- **max wait**: the longest time from a first send to its ack, retries included.
- **recovery**: from the kill until every client had a send acked that it started after the
  kill.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from bench.faults.clients import LoadClient


def analyze(
    convs: dict[str, list[LoadClient]],
    histories: dict[str, list[dict[str, Any]]],
    kill_at: float,
) -> dict[str, Any]:
    sends = [s for members in convs.values() for c in members for s in c.sends]
    acked = [s for s in sends if s.acked_at is not None]
    out: dict[str, Any] = {
        "sends": len(sends),
        "acked": len(acked),
        "unacked": sum(1 for s in sends if s.acked_at is None and s.final_error is None),
        "failed": sum(1 for s in sends if s.final_error is not None),
        "retried": sum(1 for s in sends if s.attempts > 1),
        "errors": dict(Counter(e for s in sends for e in s.errors)),
    }
    lost: list[str] = []
    stored_acked = 0
    stored_twice = 0
    store_gaps = 0
    undelivered = 0
    seq_reused = 0
    timed_out = 0
    timed_out_stored = 0
    for conv, members in convs.items():
        history = histories.get(conv, [])
        by_cmid = Counter(str(m.get("clientMessageId")) for m in history)
        by_seq = Counter((int(m.get("epoch") or 0), int(m["seq"])) for m in history)
        stored_twice += sum(n - 1 for k, n in by_cmid.items() if n > 1 and k != "None")
        stored_twice += sum(n - 1 for n in by_seq.values() if n > 1)
        seq_of = {str(m.get("clientMessageId")): int(m["seq"]) for m in history}
        cmid_at = {int(m["seq"]): str(m.get("clientMessageId")) for m in history}
        created = {str(m.get("clientMessageId")): _wall(m.get("createdAt")) for m in history}
        for client in members:
            for s in client.sends:
                if s.acked_at is None:
                    continue
                if "TIMEOUT" in s.errors:
                    timed_out += 1
                    if created.get(s.cmid, 1e18) < s.last_attempt_wall:
                        timed_out_stored += 1  # stored by an attempt answered TIMEOUT
                if seq_of.get(s.cmid) == s.seq:
                    stored_acked += 1
                else:
                    lost.append(f"{conv}:{s.cmid}:seq{s.seq}")
                    if s.seq in cmid_at:
                        seq_reused += 1  # another message now holds the acked seq
        sent_here = [int(m["seq"]) for m in history if m.get("clientMessageId")]
        if sent_here:
            present = {seq for _, seq in by_seq}
            store_gaps += sum(
                1 for q in range(min(sent_here), max(sent_here) + 1) if q not in present
            )
            wanted = {str(m["_id"]) for m in history if m.get("clientMessageId")}
            for client in members:
                given = {d.message_id for d in client.deliveries if d.conv == conv}
                undelivered += len(wanted - given)
    out.update(
        stored=stored_acked,
        lost=len(lost),
        lost_examples=lost[:10],
        seq_reused=seq_reused,
        timed_out=timed_out,
        timed_out_stored=timed_out_stored,
        stored_twice=stored_twice,
        store_gaps=store_gaps,
        undelivered=undelivered,
        delivered=sum(len(c.deliveries) for ms in convs.values() for c in ms),
        duplicates=sum(c.duplicates for ms in convs.values() for c in ms),
        seq_conflicts=sum(c.seq_conflicts for ms in convs.values() for c in ms),
        reorders=sum(c.reorders for ms in convs.values() for c in ms),
        gaps_seen=sum(c.gaps for ms in convs.values() for c in ms),
        epoch_changes=sum(c.epoch_changes for ms in convs.values() for c in ms),
        stale_epoch=sum(c.stale_epoch for ms in convs.values() for c in ms),
        reconnects=sum(c.reconnects for ms in convs.values() for c in ms),
        max_reconnect_s=round(
            max((c.disconnected_for for ms in convs.values() for c in ms), default=0.0), 3
        ),
        resume_failures=sum(len(c.resume_failures) for ms in convs.values() for c in ms),
        max_wait_s=round(max((s.wait or 0.0 for s in acked), default=0.0), 3),
        recovery_s=recovery(convs, kill_at),
    )
    return out


def _wall(value: Any) -> float:
    """An ISO timestamp of the store as epoch seconds (far future if absent)."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 1e18


def recovery(convs: dict[str, list[LoadClient]], kill_at: float) -> float | None:
    """Seconds from the kill until the last client had a send acked that it started after it."""
    worst = 0.0
    for members in convs.values():
        for client in members:
            after = [
                s.acked_at
                for s in client.sends
                if s.acked_at is not None and s.first_sent >= kill_at
            ]
            if not after:
                return None  # this client never got an ack again
            worst = max(worst, min(after) - kill_at)
    return round(worst, 3)


def verdict(
    result: dict[str, Any],
    max_wait_limit: float | None,
    allow_loss: bool = False,
    allow_duplicates: bool = False,
) -> list[str]:
    """Why a scenario fails (empty: it passes)."""
    why: list[str] = []
    for key, label in (
        ("lost", "acked messages lost"),
        ("stored_twice", "stored twice"),
        ("store_gaps", "seq holes in the store"),
        ("undelivered", "stored messages not delivered to a member"),
        ("duplicates", "duplicate deliveries"),
        ("seq_conflicts", "deliveries of another message under a seq already given"),
        ("reorders", "deliveries out of order"),
        ("gaps_seen", "seq gaps seen by clients"),
    ):
        if allow_loss and key in ("lost", "store_gaps"):
            continue
        if allow_duplicates and key == "duplicates":
            continue
        if result.get(key):
            why.append(f"{result[key]} {label}")
    if result.get("unacked"):
        why.append(f"{result['unacked']} sends never acked within 30 s")
    if result.get("recovery_s") is None:
        why.append("a client never got an ack after the kill")
    if max_wait_limit is not None and result.get("max_wait_s", 0) > max_wait_limit:
        why.append(f"a client waited {result['max_wait_s']} s (limit {max_wait_limit} s)")
    return why
