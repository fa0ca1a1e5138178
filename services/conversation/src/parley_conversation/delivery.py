"""Which messages reached a connection other than their author's (issue 17, protocol 3.6).

The gateways report, per conversation, how far each principal's connections received it.
A message turns ``delivered`` once a principal other than its author received it. Per
conversation this replica keeps, in memory, the highest seq it has looked at (``floor``) and
the messages above the floors it looked at that are still ``sent`` (``waiting``: only their
author's connections had them, by seq). A report reads only the log entries above the floor
(one range query on ``(conversationId, seq)``) and marks delivered the waiting ones that
someone else received (one update by ``_id``): at most two store calls per conversation
per report, whatever the number of members reporting.

Bounded: ``WAITING_MAX`` waiting messages per conversation (older ones drop out and stay
``sent``), ``MAX_CONVERSATIONS`` conversations (least recently reported first out). A
conversation first seen (a replica's start) begins ``LOOKBACK`` seqs below its report, so a
restart never scans a long history. Authorship is by id (``createdBy``): a user whose id
equals an agent's does not deliver that agent's messages (any other member does).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection

from parley_contract.events import PrincipalKind
from parley_contract.models import MessageStatus

LOOKBACK: Final = 200
WAITING_MAX: Final = 200
MAX_CONVERSATIONS: Final = 10_000
IN_CHUNK: Final = 50

Who = tuple[PrincipalKind, str]


@dataclass
class _Conv:
    floor: int
    waiting: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # seq → id, author
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Delivery:
    def __init__(self, messages: AsyncCollection[dict[str, Any]]) -> None:
        self.messages = messages
        self._convs: OrderedDict[str, _Conv] = OrderedDict()

    def _state(self, cid: str, top: int) -> _Conv:
        state = self._convs.get(cid)
        if state is None:
            state = _Conv(floor=max(0, top - LOOKBACK))
            self._convs[cid] = state
            while len(self._convs) > MAX_CONVERSATIONS:
                self._convs.popitem(last=False)
        else:
            self._convs.move_to_end(cid)
        return state

    async def apply(self, cid: str, got: dict[Who, int]) -> dict[Who, int]:
        """``got``: how far each principal received ``cid``. Marks the messages it delivers;
        returns the principals whose reception delivered something, with their seq."""
        if not got:
            return {}
        top = max(got.values())
        state = self._state(cid, top)
        async with state.lock:
            if top > state.floor:
                docs = await self.messages.find(
                    {"conversationId": cid, "seq": {"$gt": state.floor, "$lte": top}},
                    {"seq": 1, "createdBy": 1, "messageStatus": 1, "role": 1},
                ).to_list()
                for d in docs:
                    if "role" in d and d.get("messageStatus") == MessageStatus.SENT.value:
                        state.waiting[int(d["seq"])] = (str(d["_id"]), d.get("createdBy"))
                state.floor = top
                for seq in sorted(state.waiting)[: max(0, len(state.waiting) - WAITING_MAX)]:
                    del state.waiting[seq]
            ids: list[str] = []
            moved: dict[Who, int] = {}
            for seq in sorted(state.waiting):
                mid, author = state.waiting[seq]
                by = next((w for w, s in got.items() if s >= seq and w[1] != author), None)
                if by is None:
                    continue
                del state.waiting[seq]
                ids.append(mid)
                moved[by] = got[by]
            sent, delivered = MessageStatus.SENT.value, MessageStatus.DELIVERED.value
            for i in range(0, len(ids), IN_CHUNK):
                await self.messages.update_many(
                    {"_id": {"$in": ids[i : i + IN_CHUNK]}, "messageStatus": sent},
                    {"$set": {"messageStatus": delivered}},
                )
            return moved
