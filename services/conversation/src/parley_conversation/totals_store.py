"""The totals write: every conversation's ``$inc``/``$max`` upsert in one commit.

A bulk write of N updates is N commits on a MongoDB-wire server: on the embedded store in
its durable mode (``--sync-on-commit``) N fsyncs, ~2.5 ms each, taking the journal from the
log inserts (100 busy conversations: one totals write took 220-270 ms of fsyncs, and the
message inserts waiting behind them made the ack p99 at 1,200 sends/s 1.2 s). In one
multi-document transaction they are one commit and one fsync, with the same write concern
(``commitTransaction`` waits for it: journaled, or majority on a replica set). A server
without transactions (a standalone mongod), or a transaction that lost a race with another
replica's (aborted: nothing of it applied), gets the bulk write of before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from parley_conversation.entries import DUPLICATE_KEY, MessageTotals

logger = logging.getLogger(__name__)

ILLEGAL_OPERATION = 20  # "Transaction numbers are only allowed on a replica set member"
ATTEMPTS = 3  # of the bulk write, for upserts that raced


def totals_ops(totals: Mapping[str, MessageTotals]) -> list[UpdateOne]:
    """One atomic upsert per conversation (update operators only: no read-modify-write).

    ``lastMessage`` moves by ``$max``: stored with ``seq`` as its first field, two of them
    compare by seq (BSON compares embedded documents field by field, in order), so it only
    ever moves to a higher seq. On the embedded store an update pipeline doing the same
    (``$cond`` on the document's own seq) cost twice as much per update.
    """
    ops: list[UpdateOne] = []
    for cid, t in totals.items():
        update: dict[str, Any] = {"$max": {"lastSeq": t.max_seq}}
        if t.delivered is not None:
            update["$max"].update(t.delivered.update())
        if t.messages or t.tokens or t.cost:
            update["$inc"] = {
                "totalMessages": t.messages,
                "totalTokens": t.tokens,
                "totalCost": t.cost,
            }
        last = t.last_message
        if last is not None and last.seq is not None:
            update["$max"]["lastMessage"] = {
                "seq": last.seq,
                **last.model_dump(by_alias=True, exclude_none=True),
            }
        ops.append(UpdateOne({"_id": cid}, update, upsert=True))
    return ops


class TotalsStore:
    """Writes totals into ``conversation_totals``, in one transaction when the server has
    them (found out on the first write, remembered)."""

    def __init__(
        self, client: AsyncMongoClient[dict[str, Any]], coll: AsyncCollection[dict[str, Any]]
    ) -> None:
        self._client = client
        self._coll = coll
        self.transactions: bool | None = None  # None: not tried yet

    async def add(self, totals: Mapping[str, MessageTotals]) -> None:
        ops = totals_ops(totals)
        if not ops:
            return
        if self.transactions is not False and len(ops) > 1:
            try:
                if await self._in_one_commit(ops):
                    self.transactions = True
                    return
                # Contended (rare: each conversation has one writing replica, affinity):
                # the bulk write, which retries only the ops that raced.
            except OperationFailure as exc:
                if exc.code != ILLEGAL_OPERATION or self.transactions:
                    raise
                logger.info("the store has no transactions (%s): totals as a bulk write", exc)
                self.transactions = False
        await self._bulk(ops)

    async def _in_one_commit(self, ops: list[UpdateOne]) -> bool:
        """The ops in one transaction; False if it lost a race and was aborted (nothing of
        it applied): two replicas upserting a conversation's first totals (the loser's
        insert hits the _id index), or a write conflict (a transient transaction error)."""
        try:
            async with (
                self._client.start_session() as session,
                await session.start_transaction(),
            ):
                await self._coll.bulk_write(ops, ordered=True, session=session)
        except OperationFailure as exc:  # BulkWriteError is one
            errors = (exc.details or {}).get("writeErrors") or []
            raced = isinstance(exc, BulkWriteError) and all(
                e.get("code") == DUPLICATE_KEY for e in errors
            )
            if not (raced or exc.has_error_label("TransientTransactionError")):
                raise
            return False
        return True

    async def _bulk(self, ops: list[UpdateOne]) -> None:
        for attempt in range(ATTEMPTS):
            try:
                await self._coll.bulk_write(ops, ordered=False)
                return
            except BulkWriteError as exc:
                # Unordered: the ops without an error are applied (retrying them would count
                # twice); only the insert races are retried, as updates now.
                errors = exc.details.get("writeErrors") or []
                if attempt == ATTEMPTS - 1 or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                ops = [ops[int(e["index"])] for e in errors]
