"""What a search costs on the embedded store (regex mode, parley_conversation.search): a
user with C conversations of M messages each, in a database where other users hold as many
messages again; times a search that matches a few messages, one that matches none, and a
page through a common word. ``python -m bench.experiments.search_embedded [C] [M]``.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

from bench.experiments.seeding import run_on_embedded_store, seed_conversations
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.queries import SearchQuery
from parley_conversation.search import search
from parley_conversation.store import MongoStore

ME = Principal(id="u-me", kind=PrincipalKind.USER)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")


async def fill(store: MongoStore, user: str, conversations: int, messages: int) -> None:
    def content(c: int, i: int) -> str:
        rare = i == messages // 2 and c % 10 == 0
        return f"message {i} about the weather and trains" + (" rare-needle" if rare else "")

    await seed_conversations(
        store,
        prefix=f"{user}-",
        members=[user],
        author=user,
        conversations=conversations,
        messages=messages,
        content=content,
    )


async def timed(store: MongoStore, q: str, runs: int = 5, **extra: object) -> tuple[float, int]:
    times: list[float] = []
    hits = 0
    for _ in range(runs):
        start = time.perf_counter()
        page = await search(store, ME, SearchQuery.model_validate({"q": q, **extra}))
        times.append((time.perf_counter() - start) * 1000)
        hits = len(page["items"])
    return statistics.median(times), hits


async def measure(url: str, conversations: int, messages: int) -> None:
    store = MongoStore(url, f"bench_search_{uuid.uuid4().hex[:8]}")
    await store.init()
    await fill(store, "u-me", conversations, messages)
    await fill(store, "u-other", conversations, messages)
    out(f"mode {store.search_mode}: {conversations} conversations x {messages} messages")
    for label, q in (("rare (a few hits)", "rare-needle"), ("absent", "zzz-nothing")):
        ms, hits = await timed(store, q)
        out(f"  {label:18} {ms:8.1f} ms median, {hits} hits")
    ms, hits = await timed(store, "weather", limit=20)
    out(f"  {'common, page of 20':18} {ms:8.1f} ms median, {hits} hits")
    await store.close()


def main() -> None:
    run_on_embedded_store(measure)


if __name__ == "__main__":
    main()
