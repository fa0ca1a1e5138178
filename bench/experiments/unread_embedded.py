"""What unread counts add to a conversation list on the embedded store (receipts,
parley_conversation.cursors): a user in C conversations of M messages each, written by
someone else; times the list page alone and with unread counts, when nothing was read (the
worst case: each count scans up to the cap) and when everything was.
``python -m bench.experiments.unread_embedded [C] [M]``.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

from bench.experiments.seeding import run_on_embedded_store, seed_conversations
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Message
from parley_conversation.cursors import CursorStore
from parley_conversation.receipts import Receipts
from parley_conversation.store import MongoStore
from parley_conversation.totals_writer import TotalsWriter

ME = Principal(id="u-me", kind=PrincipalKind.USER)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")


async def timed(fn: object, runs: int = 5) -> float:
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def measure(url: str, conversations: int, messages: int) -> None:
    store = MongoStore(url, f"bench_unread_{uuid.uuid4().hex[:8]}")
    await store.init()
    cursors = CursorStore(store.messages.database, store.messages)
    await cursors.init()

    async def nothing(_subject: str, _payload: bytes) -> None:
        return None

    totals = TotalsWriter(store)  # stores the delivery marks (with the totals)
    receipts = Receipts(
        cursors,
        store.last_seq,
        nothing,
        0.5,
        totals=store.totals,
        write_marks=totals.write_marks,
    )
    await seed_conversations(
        store,
        prefix="",
        members=["u-me", "u-other"],
        author="u-other",
        conversations=conversations,
        messages=messages,
    )
    out(f"{conversations} conversations x {messages} messages by another user")

    async def page_only() -> None:
        await store.list_conversations(ME, None, None, conversations)

    async def page_with_counts() -> None:
        page = await store.list_conversations(ME, None, None, conversations)
        await receipts.unread_counts(ME, page.items)
        assert all("unreadCount" in c for c in page.items)

    out(f"  list page alone            {await timed(page_only):8.1f} ms median")
    out(f"  + unread, nothing read     {await timed(page_with_counts):8.1f} ms median")
    for c in range(conversations):
        await cursors.read_to(f"c{c}", ME.kind, ME.id, messages)
    out(f"  + unread, everything read  {await timed(page_with_counts):8.1f} ms median")
    # Delivery: a report of 200 members who received the whole conversation (first sight:
    # reads its mark and looks back LOOKBACK seqs), then one new message received by the
    # same 200 (the watermark moves: one totals update).
    got = {(PrincipalKind.USER, f"u-{i}"): messages for i in range(200)}
    start = time.perf_counter()
    moved = await receipts.delivery.apply("c0", got)
    ms = (time.perf_counter() - start) * 1000
    out(f"  delivery report, 200 members, whole conversation: {ms:.1f} ms ({len(moved)} named)")
    await store.insert_messages(
        [
            Message.model_validate(
                {
                    "_id": f"msg-{uuid.uuid4().hex[:12]}",
                    "conversationId": "c0",
                    "role": "user",
                    "content": "one more",
                    "seq": messages + 1,
                    "createdBy": "u-other",
                    "messageType": "text",
                    "messageStatus": "sent",
                }
            )
        ]
    )
    got = {k: messages + 1 for k in got}
    start = time.perf_counter()
    moved = await receipts.delivery.apply("c0", got)
    ms = (time.perf_counter() - start) * 1000
    out(f"  delivery report, 200 members, one new message: {ms:.1f} ms ({len(moved)} named)")
    await store.close()


def main() -> None:
    run_on_embedded_store(measure)


if __name__ == "__main__":
    main()
