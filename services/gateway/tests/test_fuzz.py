"""Issue 12: thousands of generated hostile frames against a real gateway and conversation
service; every frame gets its envelope answer, and a well-behaved client in the same
conversation sees no difference.

Hypothesis generates the frames (every command and unknown ones, every field of every
payload with hostile values: huge and negative integers, deep nesting, store-unsafe keys,
odd unicode, wrong types, other conversations, unknown fields), plus frames that are not
JSON objects at all. Each generated batch goes out over several fuzzing connections at
once (a user and an agent, both participants of alice's conversation); a frame with a
valid ``id`` must get exactly one reply with that id, a frame without one (non-JSON,
non-object, a bad ``id``) exactly one ``error`` event. Meanwhile alice, on another
connection, sends a message every 40 ms: each must be acknowledged, and her connection
must receive every durable event of the conversation in ``seq`` order without a gap,
her own messages in the order she sent them.

The async clients live on an event loop in a background thread; Hypothesis drives batches
from the (synchronous) test body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from parley_contract.events import COMMANDS, Event, PrincipalKind
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .conftest import Client, token

BATCHES = 100  # Hypothesis examples
BATCH = 20  # frames per example: 2,000 generated frames in all
FUZZERS = 3


# Frames must reach validation, not stop at the rate limiter.
GATEWAY_ENV = {"PARLEY_GATEWAY_COMMANDS_PER_SECOND": "100000"}


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(
        nats_server,
        store_server,
        servers_dir,
        "fz",
        gateway_env=GATEWAY_ENV,
        gateway_ports=[free_port()],
    ) as s:
        yield s


# ---------------------------------------------------------------- strategies

_HUGE = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 2**53 + 1])
_INTS = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), _HUGE)
_ODD = ["", " ", "$where", "a.b", "../../etc/passwd", "parley.>", "*", "\x00", "🦜" * 20]
# codec="utf-8": no lone surrogates (a client could not encode them as UTF-8 text either).
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(_ODD)
_KEYS = _TEXT | st.sampled_from(["$set", "a.b", "$", ".", "__proto__", "constructor"])
_SCALARS = st.one_of(
    st.none(), st.booleans(), _INTS, st.floats(allow_nan=False, allow_infinity=False), _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)
_FIELDS = [
    "conversationId",
    "content",
    "clientMessageId",
    "sinceSeq",
    "messageId",
    "emoji",
    "remove",
    "title",
    "description",
    "status",
    "tags",
    "agentId",
    "modelId",
    "context",
    "participants",
    "addParticipants",
    "removeParticipants",
    "role",
    "messageType",
    "name",
    "parentMessageId",
    "toolCalls",
    "toolResults",
    "thinking",
    "usage",
    "latency",
    "error",
    "attachments",
    "metadata",
    "finishReason",
    "cost",
    "toolName",
    "arguments",
    "messageStatus",
    "unknownField",
]


def _frames(cids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A command frame (without ``id``; the test assigns one) with hostile data."""
    cid = st.sampled_from(cids) | _TEXT
    commands = sorted(e.value for e in COMMANDS)
    server_events = [e.value for e in Event if e not in COMMANDS]  # not commands
    names = st.sampled_from(commands * 4 + server_events + ["", "MESSAGE:SEND", "message:"])
    # Mostly real command names (Hypothesis favours the simple branches of one_of).
    event = st.tuples(st.integers(0, 9), names, _TEXT | _JSON).map(
        lambda t: t[1] if t[0] < 8 else t[2]
    )
    data = st.builds(
        lambda c, rest: {"conversationId": c, **rest},
        cid,
        st.dictionaries(st.sampled_from(_FIELDS[1:]), _JSON, max_size=4),
    )
    return st.fixed_dictionaries(
        {"event": event},
        optional={"data": data | data | _JSON, "extra": _JSON},
    )


def _dumps(value: Any) -> str:
    """JSON text (the standard library's: orjson refuses integers past 64 bits)."""
    return json.dumps(value, ensure_ascii=False)


# Frames with no usable id: each must get exactly one ``error`` event.
_UNANSWERABLE = st.one_of(
    st.sampled_from(["", "{", "not json", "[1,2", '{"event": NaN}', "Infinity", "\u0000"]),
    _SCALARS.map(_dumps),
    st.lists(_SCALARS, max_size=3).map(_dumps),
    st.sampled_from([True, False, "", "x" * 129, [], {}, 1.5]).map(
        lambda bad: _dumps({"event": "message:send", "id": bad})
    ),
)


# ---------------------------------------------------------------- the clients


class Loop:
    """An event loop in a thread: the clients run there, the test submits coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _client(url: str, tok: str) -> Client:
    # No keepalive pings: their payload comes from the random module, which Hypothesis
    # (generating in the other thread meanwhile) reports as used inside a strategy.
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {tok}"},
        max_size=2**24,
        ping_interval=None,
    )
    c = Client(ws).start()
    await c.wait_for(lambda f: f.get("event") == "connected")
    return c


class Alice:
    """The well-behaved client: a message every 40 ms, each acked, all in order."""

    def __init__(self, client: Client, cid: str) -> None:
        self.c, self.cid = client, cid
        self.sent: list[str] = []
        self.failed: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            cmid = f"alice-{n}"
            r = await self.c.cmd(
                "message:send",
                {"conversationId": self.cid, "content": f"hello {n}", "clientMessageId": cmid},
                timeout=20,
            )
            if r.get("success"):
                self.sent.append(cmid)
            else:
                self.failed.append(r)
            await asyncio.sleep(0.04)


async def _setup(stack: Stack) -> tuple[Client, Alice, list[Client], list[str]]:
    url = stack.ws_url(0)
    a_id, m_id, bot_id = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("alice", "mallory", "bot"))
    alice = await _client(url, token(a_id))
    r = await alice.cmd(
        "conversation:create",
        {"title": "fuzzed", "participants": [m_id, {"id": bot_id, "kind": "agent"}]},
    )
    assert r["success"], r
    cid = r["data"]["_id"]
    other = await alice.cmd("conversation:create", {"title": "not theirs"})
    assert (await alice.cmd("conversation:join", {"conversationId": cid}))["success"]
    fuzzers = [await _client(url, token(m_id)) for _ in range(FUZZERS - 1)]
    fuzzers.append(await _client(url, token(bot_id, PrincipalKind.AGENT)))
    for f in fuzzers:
        assert (await f.cmd("conversation:join", {"conversationId": cid}))["success"]
    good = Alice(alice, cid)
    good.task = asyncio.get_running_loop().create_task(good.run())
    return alice, good, fuzzers, [cid, other["data"]["_id"]]


def _errors_without_id(c: Client) -> int:
    return sum(1 for f in c.frames if f.get("event") == "error" and "id" not in f)


async def _fire(
    fuzzers: list[Client],
    batch: list[tuple[int, dict[str, Any] | str]],
    serial: int,
    outcomes: Counter[str],
) -> None:
    """Send a batch spread over the fuzzers; wait for every answer each frame is owed."""
    owed: list[tuple[Client, set[str], int]] = []
    for i, fuzz in enumerate(fuzzers):
        mine = batch[i :: len(fuzzers)]
        ids: set[str] = set()
        errors_before = _errors_without_id(fuzz)
        unanswerable = 0
        for n, (kind, frame) in enumerate(mine):
            if isinstance(frame, str):
                unanswerable += 1
                await (fuzz.ws.send(frame.encode()) if kind % 2 else fuzz.ws.send(frame))
                continue
            fid = f"fz-{serial}-{i}-{n}"
            ids.add(fid)
            await fuzz.ws.send(_dumps({**frame, "id": fid}))
        owed.append((fuzz, ids, errors_before + unanswerable))
    deadline = time.monotonic() + 30
    for fuzz, ids, errors in owed:
        while True:
            replies = [f for f in fuzz.frames if f.get("id") in ids]
            if len(replies) >= len(ids) and _errors_without_id(fuzz) >= errors:
                break
            assert not fuzz.closed.is_set(), f"fuzzer closed: {fuzz.ws.close_code}"
            assert time.monotonic() < deadline, (
                f"unanswered: {sorted(ids - {str(f.get('id')) for f in replies})[:5]}, "
                f"errors {_errors_without_id(fuzz)}/{errors}"
            )
            await asyncio.sleep(0.02)
        # exactly one reply each, every one an envelope
        assert len(replies) == len(ids), "a frame answered twice"
        for r in replies:
            assert isinstance(r.get("success"), bool) and "timestamp" in r, r
            assert r["success"] or r["error"]["code"] != "INTERNAL_ERROR", r
            outcomes["ok" if r["success"] else r["error"]["code"]] += 1
        assert _errors_without_id(fuzz) == errors, "an error event too many"


def test_fuzzed_frames_are_all_answered_and_alice_sees_no_difference(stack: Stack) -> None:
    loop = Loop()
    try:
        alice, good, fuzzers, cids = loop.run(_setup(stack))
        serial = itertools.count()
        outcomes: Counter[str] = Counter()
        answerable = _frames(cids).map(lambda f: (0, f))
        hostile = st.tuples(st.integers(0, 1), _UNANSWERABLE)
        frame_or_garbage = st.one_of(answerable, answerable, answerable, hostile)

        @settings(
            max_examples=BATCHES,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # a failure is reported with its batch; no shrinking
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=st.lists(frame_or_garbage, min_size=BATCH, max_size=BATCH))
        def fire(batch: list[tuple[int, dict[str, Any] | str]]) -> None:
            loop.run(_fire(fuzzers, batch, next(serial), outcomes))

        fire()
        # The frames got past the gateway's shape check to the service, too.
        assert sum(outcomes.values()) > BATCHES * BATCH // 2, outcomes
        assert outcomes["ok"] and outcomes["VALIDATION_ERROR"] and outcomes["FORBIDDEN"], outcomes
        good.stop.set()
        loop.run(asyncio.wait_for(good.task, 30))
        assert not good.failed, good.failed[:3]
        assert len(good.sent) > 100, len(good.sent)
        # Every durable event of the conversation reached alice, in order, without a gap,
        # and her own messages arrived in the order she sent them.
        last = loop.run(
            alice.cmd(
                "message:send",
                {"conversationId": cids[0], "content": "done", "clientMessageId": "z"},
            )
        )
        assert last["success"], last
        loop.run(alice.wait_for(lambda f: f.get("seq") == last["data"]["seq"], 20))
        seqs = alice.seqs(cids[0])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a reorder"
        mine = [
            f["data"].get("clientMessageId")
            for f in alice.events("message:new", cids[0])
            if f["data"].get("clientMessageId", "").startswith("alice-")
        ]
        assert mine == good.sent
        for f in fuzzers:
            assert not f.closed.is_set(), f.ws.close_code
        for c in (alice, *fuzzers):
            loop.run(c.close())
    finally:
        loop.stop()
