"""The conversation service's own Python per ``message:send``, without its I/O: the real
``ConversationService`` (request decode, handler, sequencer, log entries, frames, headers,
reply envelope, metrics) in this process, its store replaced by one that keeps nothing and
its NATS publish by one that sends nothing. What FastStream, nats-py and pymongo cost comes
on top (``conversation_direct`` measures the whole).
``python -m bench.experiments.hotpath_inprocess [batch] [rounds] [--profile]``: prints the
CPU microseconds per message (``time.process_time``), median of the rounds; ``--profile``
prints cProfile's top functions instead.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Mapping, Sequence, Set
from typing import Any

import orjson

from parley_contract import subjects
from parley_contract.commands import ConversationCreate
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation
from parley_contract.routes import ROUTES
from parley_conversation import domain
from parley_conversation.entries import AppendResult, MessageTotals, PendingEvent
from parley_conversation.log import ConversationLog
from parley_conversation.sequencer import Sequencer
from parley_conversation.service import ConversationService
from parley_conversation.settings import Settings
from parley_conversation.work import command_work

CONVERSATIONS = 50


class _Collection:
    """A ``messages`` collection that takes every insert."""

    async def insert_many(self, docs: Sequence[dict[str, Any]], ordered: bool = True) -> None:
        return None

    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Store:
    """The sequencer's part of the store: the conversations in memory, the real log logic."""

    def __init__(self, convs: dict[str, Conversation]) -> None:
        self.convs = convs
        self.log = ConversationLog(_Collection())  # type: ignore[arg-type]

    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]:
        return {cid: self.convs[cid] for cid in ids if cid in self.convs}

    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]], *, strict: Set[str] = frozenset()
    ) -> dict[str, list[AppendResult]]:
        return await self.log.append_events(groups, strict=strict)

    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None:
        return None


def _body(user: str, conv: str, k: int) -> bytes:
    principal = {"id": user, "kind": "user", "name": None}
    data = {"conversationId": conv, "content": f"m{k}"}
    return orjson.dumps({"principal": principal, "data": data, "instanceId": "bench"})


async def _service() -> tuple[ConversationService, list[int]]:
    settings = Settings(
        nats_url="nats://127.0.0.1:1",
        mongodb_url="mongodb://127.0.0.1:1",
        mongodb_database="bench_hotpath",
        instance_id="bench",
    )
    svc = ConversationService(settings)
    user = Principal(id="direct-u", kind=PrincipalKind.USER)
    convs = {
        f"c{i}": domain.new_conversation(user, ConversationCreate(conversation_id=f"c{i}"))
        for i in range(CONVERSATIONS)
    }
    published: list[int] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        published.append(len(svc.attachments.sign_payload(payload)))

    svc.publish = publish  # type: ignore[method-assign]
    svc.receipts._publish = publish
    svc.sequencer = Sequencer(
        _Store(convs),  # type: ignore[arg-type]
        publish,
        svc._after_store,
        max_batch=settings.max_batch,
        on_batch=svc.metrics.batch.observe,
        publish_frame=publish,
    )
    return svc, published


async def _rounds(batch: int, rounds: int) -> list[float]:
    svc, _published = await _service()
    route = ROUTES[Event.MESSAGE_SEND]
    work = command_work(svc, route)
    op = route.event.value
    assert route.subject == subjects.command(Event.MESSAGE_SEND)
    out = []
    k = 0
    for r in range(rounds + 1):
        bodies = [_body("direct-u", f"c{(k + i) % CONVERSATIONS}", k + i) for i in range(batch)]
        k += batch
        t0 = time.process_time()
        replies = await asyncio.gather(*(svc.serve(op, b, work) for b in bodies))
        spent = time.process_time() - t0
        assert all(orjson.loads(x)["success"] for x in replies), replies[0]
        if r:  # the first round warms up
            out.append(spent * 1e6 / batch)
    await svc.sequencer.drain()
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    batch = int(args[0]) if args else 50
    rounds = int(args[1]) if len(args) > 1 else 200
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(_rounds(batch, rounds))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return
    per = asyncio.run(_rounds(batch, rounds))
    sys.stdout.write(
        f"{{'batch': {batch}, 'rounds': {rounds}, "
        f"'cpuUsPerMessage': {round(statistics.median(per), 1)}, "
        f"'p10': {round(sorted(per)[len(per) // 10], 1)}}}\n"
    )


if __name__ == "__main__":
    main()
