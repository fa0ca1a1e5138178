"""Sequence epochs (issue 11): a seq that was published and is then not in the store is never
silently reused.

The store is the source of truth for seqs, and with a durable write concern it loses nothing
acknowledged. Still, a store restored from a backup, or one that lost writes (a non-durable
setting), has a history shorter than what clients were given: the next seq would repeat one
they hold, and gateways and clients would drop the new event as a duplicate.

Detection: a high-water mark per conversation kept outside the store, in the NATS KV bucket
``subjects.KV_SEQUENCES`` (key: conversation id, value ``{"epoch", "seq"}``): after each
group commit, before its frames are published, the replica puts the conversation's highest
seq and epoch there (a plain publish, no round trip; the same connection carries the frames
after it, so the server has the mark first). A replica that loads a conversation's next seq
from the log (nothing cached: a start, an error, the store's pool cleared) compares the log's
maximum with the mark: a mark above it means the history is shorter than what was handed
out, and the conversation's epoch becomes one more than the highest seen (the mark's, the
last log entry's); the new mark (new epoch, the log's maximum) is written with an
acknowledgement before any new seq is used. Two replicas that load at once compute the same
epoch from the same mark.

Every durable frame carries its ``epoch``, stored with its log entry (replays carry the epoch
it was published with); ``conversation:joined`` carries the current one. A gateway or client
that sees a higher epoch for a conversation resets its ordering state for it (docs/protocol.md).
Without NATS KV (the mark unreadable) a replica goes on with the log's last epoch and logs it.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from parley_contract import jsonutil, subjects
from parley_runtime import jetstream

logger = logging.getLogger(__name__)


class HighWaterMarks:
    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None

    async def open(self, want: jetstream.Replicas) -> None:
        """Open (or create, or scale to ``want`` replicas) the bucket of marks."""
        self._kv = await jetstream.declare_kv(self._nc.jetstream(), subjects.KV_SEQUENCES, want)

    async def get(self, conversation_id: str) -> tuple[int, int] | None:
        """(epoch, highest seq published) of a conversation; None if unknown or unreadable."""
        if self._kv is None:
            return None
        try:
            entry = await self._kv.get(conversation_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("high-water mark of %s unreadable: %r", conversation_id, exc)
            return None
        try:
            doc = jsonutil.loads(entry.value or b"")
            return int(doc["epoch"]), int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            logger.error("malformed high-water mark of %s", conversation_id)
            return None

    async def put(self, conversation_id: str, epoch: int, seq: int) -> None:
        """Write a mark and wait for JetStream's acknowledgement (a new epoch)."""
        if self._kv is None:
            return
        await self._kv.put(conversation_id, _value(epoch, seq))

    async def note(self, conversation_id: str, epoch: int, seq: int) -> None:
        """Publish a mark without waiting (after each group commit, before its frames)."""
        if self._kv is None or not self._nc.is_connected:
            return
        try:
            await self._nc.publish(
                subjects.kv_key_subject(subjects.KV_SEQUENCES, conversation_id),
                _value(epoch, seq),
            )
        except nats.errors.Error as exc:
            logger.warning("high-water mark of %s not published: %r", conversation_id, exc)


def _value(epoch: int, seq: int) -> bytes:
    return jsonutil.dumps({"epoch": epoch, "seq": seq})
