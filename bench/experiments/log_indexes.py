"""What one index of the conversation log costs the embedded store, per message: batches of
10 message-like documents inserted into ``messages``-shaped collections with and without the
partial unique ``(conversationId, clientMessageId)`` index, then each marked delivered (an
``update_many`` by ``_id``, as a delivery receipt does); the store server's CPU per document
(``/proc``). Variants alternate on one store (durable mode, journaled writes):
``python -m bench.experiments.log_indexes [rounds] [batches]``.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel

from bench.system import cpu_seconds
from parley_devstack.servers import StoreServer

BATCH = 10
CONVERSATIONS = 100


async def one(url: str, pid: int, name: str, with_cmid_index: bool, batches: int) -> str:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, w=1, journal=True)
    coll = client["log_indexes"][name]
    indexes = [IndexModel([("conversationId", ASCENDING), ("seq", ASCENDING)], unique=True)]
    if with_cmid_index:
        indexes.append(
            IndexModel(
                [("conversationId", ASCENDING), ("clientMessageId", ASCENDING)],
                unique=True,
                partialFilterExpression={"clientMessageId": {"$type": "string"}},
            )
        )
    await coll.create_indexes(indexes)
    seqs = [0] * CONVERSATIONS
    at = time.time()
    body: dict[str, Any] = {"role": "user", "content": "hello there " * 3, "messageType": "text"}
    body |= {"messageStatus": "sent", "createdBy": "u1", "isActive": True, "epoch": 0}
    ids: list[str] = []
    cpu0 = cpu_seconds(pid)
    for b in range(batches):
        docs = []
        for k in range(BATCH):
            c = (b * BATCH + k) % CONVERSATIONS
            seqs[c] += 1
            ids.append(f"msg-{secrets.token_hex(10)}")
            docs.append(
                {
                    "_id": ids[-1],
                    "conversationId": f"c{c}",
                    "seq": seqs[c],
                    "clientMessageId": f"k{b}-{k}",
                    "createdAt": at,
                    **body,
                }
            )
        await coll.insert_many(docs, ordered=True)
    insert = (cpu_seconds(pid) - cpu0) * 1000 / len(ids)
    cpu0 = cpu_seconds(pid)
    for i in range(0, len(ids), BATCH):
        await coll.update_many(
            {"_id": {"$in": ids[i : i + BATCH]}, "messageStatus": "sent"},
            {"$set": {"messageStatus": "delivered"}},
        )
    update = (cpu_seconds(pid) - cpu0) * 1000 / len(ids)
    await client.close()
    label = "with (conversationId, clientMessageId)" if with_cmid_index else "_id + (conv, seq)"
    return f"{label:40s} insert {insert:.3f} ms/doc, delivered update {update:.3f} ms/doc"


async def main(url: str, pid: int, rounds: int, batches: int) -> None:
    for r in range(rounds):
        for with_index in (False, True):
            line = await one(url, pid, f"r{r}_{int(with_index)}", with_index, batches)
            sys.stdout.write(line + "\n")


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    with tempfile.TemporaryDirectory() as tmp:
        server = StoreServer(Path(tmp)).start()
        try:
            assert server.process is not None and server.process.proc is not None
            asyncio.run(main(server.url, server.process.proc.pid, rounds, batches))
        finally:
            server.stop()
