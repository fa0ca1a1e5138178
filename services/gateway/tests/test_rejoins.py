"""parley_gateway.rejoins: the rejoins of one conversation are coalesced (one batched request
in flight per conversation, what arrives meanwhile goes in the next one) and each caller
gets its own answer, as from a join of its own. The service side is stood in for by a
function that answers when the test lets it (no timing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley_contract import envelopes
from parley_contract.errors import ErrorCode
from parley_contract.events import PrincipalKind
from parley_contract.internal import MAX_REJOIN_PRINCIPALS, Principal
from parley_contract.routes import REJOIN_SUBJECT
from parley_gateway import rejoins as rejoins_module
from parley_gateway.rejoins import Rejoins


def _p(pid: str) -> Principal:
    return Principal(id=pid, kind=PrincipalKind.USER)


class Service:
    """Answers each batched rejoin when released; admits everyone but ``refused``."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.refused = refused
        self.reply: dict[str, Any] | None = None

    async def __call__(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        assert subject == REJOIN_SUBJECT
        self.bodies.append(body)
        await self.release.wait()
        if self.reply is not None:
            return self.reply
        members = [
            {"ok": False, "error": {"code": "FORBIDDEN", "message": "no"}}
            if p["id"] in self.refused
            else {"ok": True, "unreadCount": i, "readSeq": 10 + i}
            for i, p in enumerate(body["principals"])
        ]
        data = {"conversation": {"_id": body["conversationId"]}, "lastSeq": 7, "epoch": 1}
        return envelopes.ok({**data, "cursors": [], "members": members})


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)  # past the window; the order matters, not the time


async def test_rejoins_arriving_while_one_is_in_flight_share_the_next_request() -> None:
    svc = Service(refused=frozenset({"carol"}))
    sizes: list[int] = []
    rj = Rejoins(svc, "gw-1", sizes.append)
    first = asyncio.create_task(rj.authorize("c1", _p("alice")))
    await _settle()
    assert [len(b["principals"]) for b in svc.bodies] == [1]  # in flight, waiting
    later = [asyncio.create_task(rj.authorize("c1", _p(x))) for x in ("bob", "carol", "dave")]
    other = asyncio.create_task(rj.authorize("c2", _p("erin")))  # its own conversation
    await _settle()
    assert sorted(b["conversationId"] for b in svc.bodies) == ["c1", "c2"]
    svc.release.set()
    alice = await first
    bob, carol, dave = await asyncio.gather(*later)
    await other
    c1 = [b for b in svc.bodies if b["conversationId"] == "c1"]
    assert [[p["id"] for p in b["principals"]] for b in c1] == [["alice"], ["bob", "carol", "dave"]]
    assert c1[0]["instanceId"] == "gw-1"
    assert sorted(sizes) == [1, 1, 3]
    assert alice["success"] and alice["data"]["lastSeq"] == 7 and alice["data"]["readSeq"] == 10
    assert bob["data"] == {
        "conversation": {"_id": "c1"},
        "lastSeq": 7,
        "epoch": 1,
        "cursors": [],
        "unreadCount": 0,
        "readSeq": 10,
    }
    assert dave["data"]["readSeq"] == 12
    assert not carol["success"] and carol["error"]["code"] == "FORBIDDEN"


async def test_a_failed_or_malformed_batch_fails_each_caller() -> None:
    svc = Service()
    svc.reply = envelopes.fail(ErrorCode.TIMEOUT, "nobody answered")
    svc.release.set()
    rj = Rejoins(svc, "gw-1")
    got = await asyncio.gather(*(rj.authorize("c1", _p(x)) for x in ("a", "b")))
    assert [g["error"]["code"] for g in got] == ["TIMEOUT", "TIMEOUT"]
    assert len(svc.bodies) == 2  # a timed-out batch is asked once more, then fails
    svc.reply = envelopes.ok({"lastSeq": 1, "members": [{"ok": True}]})  # one answer for two
    got = await asyncio.gather(*(rj.authorize("c1", _p(x)) for x in ("a", "b")))
    assert [g["error"]["code"] for g in got] == ["INTERNAL_ERROR", "INTERNAL_ERROR"]
    svc.reply = envelopes.ok({"lastSeq": 1, "members": [{"ok": False, "error": "junk"}]})
    one = await rj.authorize("c1", _p("a"))
    assert one["error"]["code"] == "INTERNAL_ERROR"


async def test_a_large_batch_is_split() -> None:
    svc = Service()
    svc.release.set()
    rj = Rejoins(svc, "gw-1")
    n = MAX_REJOIN_PRINCIPALS + 3
    got = await asyncio.gather(*(rj.authorize("c1", _p(f"u{i}")) for i in range(n)))
    assert all(g["success"] for g in got)
    assert [len(b["principals"]) for b in svc.bodies] == [MAX_REJOIN_PRINCIPALS, 3]


async def test_a_timed_out_batch_is_asked_again() -> None:
    svc = Service()
    svc.release.set()
    timeouts = [envelopes.fail(ErrorCode.TIMEOUT, "nobody answered")]
    real = svc.__call__

    async def flaky(subject: str, body: dict[str, Any]) -> dict[str, Any]:
        if timeouts:
            svc.bodies.append(body)
            return timeouts.pop()
        return await real(subject, body)

    rj = Rejoins(flaky, "gw-1")
    got = await asyncio.gather(*(rj.authorize("c1", _p(x)) for x in ("a", "b")))
    assert all(g["success"] for g in got) and len(svc.bodies) == 2


async def test_in_a_storm_a_conversation_waits_longer_for_company(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With rejoins of STORM_CONVERSATIONS conversations under way, the first rejoin of a
    conversation waits STORM_WINDOW_SECONDS (not WINDOW_SECONDS) for the others: members
    resuming a few milliseconds apart go in one request (fewer, fuller batches)."""
    monkeypatch.setattr(rejoins_module, "STORM_WINDOW_SECONDS", 2.0)
    svc = Service()
    svc.release.set()
    rj = Rejoins(svc, "gw-1")
    quiet = [asyncio.create_task(rj.authorize("q", _p("quinn")))]
    await asyncio.sleep(0.1)  # past WINDOW_SECONDS: alone in its request
    quiet.append(asyncio.create_task(rj.authorize("q", _p("quentin"))))
    await asyncio.gather(*quiet)
    assert [[p["id"] for p in b["principals"]] for b in svc.bodies] == [["quinn"], ["quentin"]]

    svc.bodies.clear()
    storm = [
        asyncio.create_task(rj.authorize(f"c{i}", _p(f"u{i}")))
        for i in range(rejoins_module.STORM_CONVERSATIONS - 1)
    ]
    first = asyncio.create_task(rj.authorize("c", _p("alice")))  # the storm's 16th
    await asyncio.sleep(0.1)  # past WINDOW_SECONDS, within STORM_WINDOW_SECONDS
    assert svc.bodies == [] or all(b["conversationId"] != "c" for b in svc.bodies)
    second = asyncio.create_task(rj.authorize("c", _p("bob")))
    assert (await first)["success"] and (await second)["success"]
    await asyncio.gather(*storm)
    c = [b for b in svc.bodies if b["conversationId"] == "c"]
    assert [[p["id"] for p in b["principals"]] for b in c] == [["alice", "bob"]]
