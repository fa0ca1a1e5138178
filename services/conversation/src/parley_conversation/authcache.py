"""What authorizes a ``message:send``, cached by the partition's owner (issue 16).

A batch of sends used to cost two store round trips: the read of the conversations (role,
status, deletion: :mod:`parley_conversation.roles`) and the log's insert. The owner of a
partition (docs/affinity.md) may skip the read for a conversation it holds, as long as the
conversation document it holds is the stored one. Exactly, not "recently": a removed member
must not send one more message once the removal is acknowledged, whoever removed them.

Why the log tells when the cache is stale: every change of a conversation document (update,
delete, create) is acknowledged only after its durable ``conversation:*`` event is in the
log, written *after* the document (handlers.py). So a change this replica did not read is
in the log at a seq at or after the next seq this replica had cached before it read the
document: entries below that seq existed already, and the change's entry came later. This
replica writes densely from its cached next seq on, so such an entry is always met:

- a cached entry is valid only while the log's cached next seq of the conversation is the
  one at the read plus this replica's own writes since (``expected``): any reload of it (a
  collision, an error, a partition move, the store's pool cleared) drops it;
- the sends it authorized go to the log ``strict``: an insert that collides with another
  writer's entry is not retried there (log.STALE) but authorized again from the store
  (sequencer.py), so a stale entry never authorizes a stored message;
- a durable event of the conversation written by this replica itself (its own update or
  delete) drops the entry before the batch that carries it.

Held only for partitions this replica owns (``owns``), dropped when it takes or gives one
up (service.py), bounded in size (least recently used first).
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import LRUCache

from parley_contract.models import Conversation

CACHE_SIZE = 10_000  # conversations


class AuthCache:
    def __init__(
        self,
        next_seq: Callable[[str], int | None],
        owns: Callable[[str], bool],
        *,
        size: int = CACHE_SIZE,
    ) -> None:
        self._next_seq = next_seq  # the log's cached next seq (ConversationLog.cached_next_seq)
        self._owns = owns  # whether this replica owns the conversation's partition now
        self._entries: LRUCache[str, tuple[Conversation, int]] = LRUCache(size)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, cid: str) -> tuple[Conversation, int] | None:
        """The conversation and the next seq it is valid at, if still valid; else None."""
        entry = self._entries.get(cid)  # the most recently used now
        if entry is not None:
            if self._owns(cid) and self._next_seq(cid) == entry[1]:
                self.hits += 1
                return entry
            del self._entries[cid]
        self.misses += 1
        return None

    def base(self, cid: str) -> int | None:
        """Taken *before* reading the conversation: the next seq the read is valid from."""
        return self._next_seq(cid) if self._owns(cid) else None

    def commit(self, cid: str, conv: Conversation | None, base: int | None, written: int) -> None:
        """After a batch: keep ``conv`` (read or reused when the log's next seq was
        ``base``) if the log went on from ``base`` by exactly this batch's ``written``
        entries; otherwise forget it."""
        expected = None if base is None else base + written
        if conv is None or expected is None or self._next_seq(cid) != expected:
            self._entries.pop(cid, None)
            return
        if not self._owns(cid):
            self._entries.pop(cid, None)
            return
        self._entries[cid] = (conv, expected)  # the least recently used go beyond the size

    def seed(self, cid: str, conv: Conversation, base: int | None) -> None:
        """A conversation read elsewhere (a join: ``base`` taken before the read): kept as
        a batch's read would be (``commit`` with nothing written), so the first send after
        a join is authorized from here; not when the log moved since ``base``."""
        if base is None or cid in self._entries or not self._owns(cid):
            return
        if self._next_seq(cid) == base:
            self._entries[cid] = (conv, base)

    def drop(self, cid: str) -> None:
        self._entries.pop(cid, None)

    def drop_where(self, which: Callable[[str], bool]) -> None:
        """Forget the conversations ``which`` picks (a partition taken or given up)."""
        for cid in [c for c in self._entries if which(c)]:
            del self._entries[cid]
