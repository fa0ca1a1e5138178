"""A conversation's running agent turn as this gateway knows it (docs/protocol.md 5.5).

Each subscribed conversation has a :class:`TurnTracker`. When the gateway subscribes it
loads the turn state the agent bridge keeps in KV (``subjects.KV_TURNS``) and applies on top
of it the turn frames that arrived since the subscription (deltas deduplicated by index);
from then on it applies every turn frame as it arrives. A joining connection gets
:meth:`TurnTracker.snapshot` right before it becomes a member, with no await in between: the
snapshot covers exactly the frames before, live delivery exactly the frames after.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from parley_contract import jsonutil
from parley_contract.events import Event
from parley_contract.turnstate import WRITE_INTERVAL_SECONDS, TurnState

logger = logging.getLogger(__name__)

# Reads of the KV state at most (see load: ~0.5 s at worst, only while a stream runs).
LOAD_ATTEMPTS = 10
_DELTA = Event.MESSAGE_STREAM_DELTA.value


class TurnTracker:
    __slots__ = ("buffer", "state")

    def __init__(self) -> None:
        self.state = TurnState()
        self.buffer: list[tuple[str, Any]] | None = []  # frames until the KV state is loaded

    @property
    def tracking(self) -> bool:
        """Whether a message:new may change the state (loading, or a turn is known)."""
        return self.buffer is not None or self.state.parent is not None

    def on_frame(self, event: str, data: Any) -> None:
        if self.buffer is not None:
            self.buffer.append((event, data))
        else:
            self.state.apply(event, data)

    async def load(self, kv: KeyValue | None, cid: str) -> None:
        """The KV state, then the frames buffered since the subscription on top of it."""
        base = TurnState()
        applied = 0
        quiet = 0.0
        try:
            for _ in range(LOAD_ATTEMPTS):
                base = await _read(kv, cid)
                assert self.buffer is not None
                frames = list(self.buffer)
                for event, data in frames:
                    base.apply(event, data)
                applied = len(frames)
                if base.broken:
                    # The KV state is older than the first live delta received: the bridge
                    # writes it again within WRITE_INTERVAL_SECONDS of a change.
                    await asyncio.sleep(WRITE_INTERVAL_SECONDS)
                    continue
                if base.stream is None or any(e == _DELTA for e, _ in frames):
                    break  # no stream, or the live deltas follow the KV state: complete
                if quiet >= 2 * WRITE_INTERVAL_SECONDS:
                    break  # no delta for that long: the KV state has every delta
                # A stream runs and no live delta came yet: the KV state may lack the last
                # deltas published before the subscription. Wait for one, or for quiet.
                await asyncio.sleep(WRITE_INTERVAL_SECONDS / 2)
                quiet += WRITE_INTERVAL_SECONDS / 2
        finally:
            # No await from here on: frames arriving meanwhile are not lost.
            rest = (self.buffer or [])[applied:]
            for event, data in rest:
                base.apply(event, data)
            self.state = base
            self.buffer = None

    def snapshot(self, cid: str) -> list[bytes]:
        if self.buffer is not None or not self.state.active:
            return []
        return [jsonutil.dumps(f) for f in self.state.snapshot(cid)]


async def _read(kv: KeyValue | None, cid: str) -> TurnState:
    if kv is None:
        return TurnState()
    try:
        entry = await kv.get(cid)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return TurnState()
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        logger.warning("turn state of %s not read: %r", cid, exc)
        return TurnState()
    try:
        return TurnState.from_json(jsonutil.loads(entry.value or b""))
    except ValueError:
        return TurnState()
