"""Unit tests of the group commit (an in-memory repository: no network, no timing)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence, Set
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from parley_contract import envelopes, jsonutil
from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation, Message
from parley_conversation import domain, totals_writer
from parley_conversation.entries import AppendResult, MessageTotals, PendingEvent
from parley_conversation.sequencer import Sequencer

ALICE = Principal(id="u-alice", kind=PrincipalKind.USER)
MALLORY = Principal(id="u-mallory", kind=PrincipalKind.USER)


class MemoryRepo:
    """Just what the sequencer calls; each call yields to the loop like a real store."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        self.events: list[dict[str, Any]] = []
        self.messages: list[Message] = []
        self.totals = MessageTotals()
        self.append_calls = 0
        self.fail_inserts = 0

    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]:
        await asyncio.sleep(0)
        return {self.conv.id: self.conv} if self.conv.id in ids else {}

    async def frames_by_client_ids(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        await asyncio.sleep(0)
        ids = wanted.get(self.conv.id, [])
        return {(self.conv.id, e["cmid"]): e["frame"] for e in self.events if e["cmid"] in ids}

    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]], *, strict: Set[str] = frozenset()
    ) -> dict[str, list[AppendResult]]:
        self.append_calls += 1
        await asyncio.sleep(0)
        out: dict[str, list[AppendResult]] = {}
        for cid, events in groups.items():
            out[cid] = []
            for p in events:
                earlier = [
                    e
                    for e in self.events
                    if p.client_message_id and e["cmid"] == p.client_message_id
                ]
                if earlier:  # what the unique index does
                    frame = earlier[0]["frame"]
                    out[cid].append(AppendResult(frame["seq"], frame, duplicate=True))
                    continue
                seq = len(self.events) + 1
                if p.message is not None:  # a message is its own log entry
                    stored = p.message(seq)
                    self.messages.append(stored)
                    data = model_json(stored)
                else:
                    assert p.build is not None
                    data = p.build(seq)
                frame = envelopes.event_frame(p.event, data, conversation_id=cid, seq=seq)
                self.events.append({"cmid": p.client_message_id, "frame": frame})
                out[cid].append(AppendResult(seq, frame))
        return out

    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None:
        if self.fail_inserts:
            self.fail_inserts -= 1
            raise AutoReconnect("store restarting")
        for t in totals.values():
            self.totals.messages += t.messages
            self.totals.max_seq = max(self.totals.max_seq, t.max_seq)


@pytest.fixture
def setup() -> tuple[MemoryRepo, Sequencer, list[tuple[str, dict[str, Any]]], list[int]]:
    conv = domain.new_conversation(ALICE, ConversationCreate(conversation_id="c1"))
    repo = MemoryRepo(conv)
    published: list[tuple[str, dict[str, Any]]] = []
    batches: list[int] = []

    async def publish(subject: str, payload: bytes) -> None:
        published.append((subject, jsonutil.loads(payload)))

    seq = Sequencer(repo, publish, max_batch=50, on_batch=batches.append)  # type: ignore[arg-type]
    return repo, seq, published, batches


def message(text: str, cmid: str | None = None) -> Message:
    return domain.new_message(
        ALICE, MessageSend(conversation_id="c1", content=text, client_message_id=cmid)
    )


async def test_concurrent_sends_are_batched_in_order(setup: Any) -> None:
    repo, seq, published, batches = setup
    results = await asyncio.gather(*(seq.send(ALICE, message(f"m{i}")) for i in range(120)))
    assert [r.seq for r in results] == list(range(1, 121))
    assert [r.message["content"] for r in results] == [f"m{i}" for i in range(120)]
    assert max(batches) > 1 and max(batches) <= 50 and sum(batches) == 120
    assert repo.append_calls == len(batches) < 120
    assert [f["seq"] for _, f in published] == list(range(1, 121))
    await seq.settle_totals()
    assert repo.totals.messages == 120 and repo.totals.max_seq == 120


async def test_outsider_fails_alone(setup: Any) -> None:
    repo, seq, _published, _batches = setup
    outcomes = await asyncio.gather(
        seq.send(ALICE, message("a")),
        seq.send(MALLORY, message("b")),
        seq.send(ALICE, message("c")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], ParleyError) and outcomes[1].code is ErrorCode.FORBIDDEN
    assert [o.seq for o in (outcomes[0], outcomes[2])] == [1, 2]  # type: ignore[union-attr]
    assert [m.content for m in repo.messages] == ["a", "c"]


async def test_same_client_message_id_in_one_batch(setup: Any) -> None:
    repo, seq, _published, _batches = setup
    results = await asyncio.gather(*(seq.send(ALICE, message("x", "same")) for _ in range(10)))
    assert len({r.message["_id"] for r in results}) == 1
    assert len(repo.messages) == 1
    again = await seq.send(ALICE, message("x", "same"))
    assert again.duplicate and again.message == results[0].message


async def test_generic_events_share_the_sequence(setup: Any) -> None:
    _repo, seq, published, _batches = setup
    a = await seq.send(ALICE, message("a"))
    ev = await seq.append("c1", Event.CONVERSATION_UPDATED, lambda s: {"at": s})
    assert (a.seq, ev.seq) == (1, 2) and ev.frame["data"] == {"at": 2}
    assert [f["event"] for _, f in published] == ["message:new", "conversation:updated"]


async def test_drain_finishes_work_then_refuses(setup: Any) -> None:
    repo, seq, _published, _batches = setup
    pending = [asyncio.ensure_future(seq.send(ALICE, message(f"m{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    await seq.drain()
    assert all(p.done() and not p.exception() for p in pending)
    assert len(repo.messages) == 20
    with pytest.raises(ParleyError) as exc:
        await seq.send(ALICE, message("late"))
    assert exc.value.code is ErrorCode.SERVICE_UNAVAILABLE


async def test_overload_refuses_sends_before_storing_them() -> None:
    """While the oldest queued send has waited longer than max_wait, a new send gets
    SERVICE_UNAVAILABLE at once (with a retry hint) and is not stored; every send accepted
    is stored, in order, and sends are accepted again once the queue has drained."""
    conv = domain.new_conversation(ALICE, ConversationCreate(conversation_id="c1"))
    repo = MemoryRepo(conv)
    gate = asyncio.Event()
    real_append = repo.append_events

    async def slow_append(*args: Any, **kwargs: Any) -> dict[str, list[AppendResult]]:
        await gate.wait()
        return await real_append(*args, **kwargs)

    repo.append_events = slow_append  # type: ignore[method-assign]

    async def publish(subject: str, payload: bytes) -> None:
        return None

    seq = Sequencer(repo, publish, max_batch=10, max_wait=0.05)  # type: ignore[arg-type]
    accepted = [asyncio.ensure_future(seq.send(ALICE, message(f"m{i}"))) for i in range(10)]
    await asyncio.sleep(0)  # the worker takes these 10 and waits for the store
    accepted += [asyncio.ensure_future(seq.send(ALICE, message(f"m{i}"))) for i in range(10, 15)]
    await asyncio.sleep(0)
    assert seq.oldest_wait < 0.05
    await asyncio.sleep(0.08)  # the 5 queued behind the stuck batch now wait > max_wait
    with pytest.raises(ParleyError) as exc:
        await seq.send(ALICE, message("one too many"))
    assert exc.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert "not stored" in exc.value.message
    assert exc.value.details is not None and exc.value.details["retryAfterMs"] >= 50
    gate.set()
    results = await asyncio.gather(*accepted)
    assert [r.message["content"] for r in results] == [f"m{i}" for i in range(15)]
    assert [m.content for m in repo.messages] == [f"m{i}" for i in range(15)]
    assert seq.oldest_wait == 0.0
    again = await seq.send(ALICE, message("after"))
    assert again.seq == 16


async def test_totals_errors_are_retried_and_never_fail_a_stored_send(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, seq, published, _batches = setup
    monkeypatch.setattr(totals_writer, "PROJECTION_FIRST_DELAY", 0)
    repo.fail_inserts = 2  # the totals write fails twice, then succeeds
    res = await seq.send(ALICE, message("survives"))
    assert res.seq == 1 and [m.content for m in repo.messages] == ["survives"]
    await seq.settle_totals()
    assert repo.totals.messages == 1
    failures: list[int] = []
    seq.totals.on_failure = lambda: failures.append(1)
    repo.fail_inserts = 100
    res = await seq.send(ALICE, message("stored, totals lost"))
    assert res.seq == 2 and [m.content for m in repo.messages] == [
        "survives",
        "stored, totals lost",
    ]
    await seq.settle_totals()
    assert failures == [1] and repo.totals.messages == 1
    assert [f["data"]["content"] for _, f in published] == ["survives", "stored, totals lost"]


async def test_totals_are_coalesced_and_exact_once_settled(setup: Any) -> None:
    repo, seq, _published, batches = setup
    calls: list[int] = []
    gate = asyncio.Event()
    real = repo.add_totals

    async def slow_totals(totals: Mapping[str, MessageTotals]) -> None:
        calls.append(sum(t.messages for t in totals.values()))
        await gate.wait()  # the store is slow: the next batches' totals must merge
        await real(totals)

    repo.add_totals = slow_totals
    first = await seq.send(ALICE, message("first"))  # replied before its totals are written
    assert first.seq == 1 and repo.totals.messages == 0
    rest = [asyncio.ensure_future(seq.send(ALICE, message(f"m{i}"))) for i in range(30)]
    await asyncio.gather(*rest)
    assert len(batches) >= 2
    gate.set()
    await seq.settle_totals()
    assert repo.totals.messages == 31 and repo.totals.max_seq == 31
    assert calls == [1, 30]  # one write in flight, everything after it merged into one


def test_merge_totals_keeps_the_higher_last_message() -> None:
    a = MessageTotals(messages=1, tokens=2, cost=0.5, last_message=None, max_seq=3)
    conv_msg = domain.new_message(ALICE, MessageSend(conversation_id="c1", content="x"))
    last = domain.last_message_of(conv_msg.model_copy(update={"seq": 7}))
    b = MessageTotals(messages=2, tokens=1, cost=0.25, last_message=last, max_seq=7)
    m = totals_writer.merge_totals(a, b)
    assert (m.messages, m.tokens, m.cost, m.max_seq) == (3, 3, 0.75, 7)
    assert m.last_message is last
    assert totals_writer.merge_totals(b, a).last_message is last


async def test_after_store_hook_runs_at_once_and_never_fails_a_stored_send() -> None:
    """The after-store hook (the service's receipts and agent turns) is called once per
    conversation per batch, before the senders are answered; only the work it returns runs
    in the background, and a hook that raises leaves the stored sends acknowledged."""
    conv = domain.new_conversation(ALICE, ConversationCreate(conversation_id="c1"))
    repo = MemoryRepo(conv)
    calls: list[list[int | None]] = []
    background: list[str] = []

    async def later() -> None:
        background.append("turns")

    def hook(c: Conversation, stored: list[Message]) -> Any:
        calls.append([m.seq for m in stored])
        if len(calls) == 1:
            return later()
        raise RuntimeError("a bug in the hook")

    async def publish(subject: str, payload: bytes) -> None:
        return None

    seq = Sequencer(repo, publish, hook)  # type: ignore[arg-type]
    first = await asyncio.gather(*(seq.send(ALICE, message(f"m{i}")) for i in range(3)))
    assert calls == [[1, 2, 3]]  # one batch, one call
    second = await seq.send(ALICE, message("after"))  # the hook raises: still stored
    assert [r.seq for r in first] == [1, 2, 3] and second.seq == 4
    await seq.drain()
    assert background == ["turns"] and calls == [[1, 2, 3], [4]]
