"""A conversation's delivery watermark: which of its messages are ``delivered`` (protocol 3.6).

A message turns ``delivered`` once a principal other than its author received it. Only two
cursors of a conversation decide that for every message: the highest seq any principal
received (``top``, held by ``by``) and the highest seq received by any principal other than
``by`` (``second``). A message at seq ``s`` by author ``a`` is delivered iff ``s <=
reach(a)``: ``second`` for ``by``'s own messages, ``top`` for everyone else's. Principals
count by id, as authorship does (``createdBy``): a user whose id equals an agent's does not
deliver that agent's messages.

The mark is kept in the conversation's totals document (``deliveredTop: {seq,
principalId}``, ``deliveredOther``), each moved by ``$max`` alone, so two writers (an owner
and the replica taking its partition over) can never make it claim more than was received:
every ``deliveredOther`` written is at most its writer's ``deliveredTop``, whose principal is
another one. The stored ``messageStatus`` is not written again; reads derive it
(``status``): stored ``delivered`` stays delivered (documents from before the watermark).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from parley_contract.models import MessageStatus

TOP: Final = "deliveredTop"
OTHER: Final = "deliveredOther"
FIELDS: Final = {TOP: 1, OTHER: 1}  # the projection a read of the mark needs

SENT: Final = MessageStatus.SENT.value
DELIVERED: Final = MessageStatus.DELIVERED.value


@dataclass(frozen=True, slots=True)
class Mark:
    top: int = 0  # the highest seq any principal received
    by: str = ""  # the principal (id) at ``top``
    second: int = 0  # the highest seq received by a principal other than ``by``

    def reach(self, author: str | None) -> int:
        """The highest seq up to which ``author``'s messages are delivered."""
        return self.second if author == self.by else self.top

    def delivers(self, seq: int, author: str | None) -> bool:
        return 0 < seq <= self.reach(author)

    def received(self, got: Mapping[str, int]) -> Mark:
        """This mark once each principal (id) of ``got`` received up to its seq. Exact:
        the top two of every principal's cursor, whatever the order of the reports."""
        top, by, second = self.top, self.by, self.second
        for pid, seq in got.items():
            if pid == by:
                top = max(top, seq)
            elif seq > top:
                second, top, by = max(second, top), seq, pid
            else:
                second = max(second, seq)
        return Mark(top, by, second)

    def joined(self, other: Mark) -> Mark:
        """The mark of both (two marks of the same conversation computed apart)."""
        if self.by == other.by:
            return Mark(max(self.top, other.top), self.by, max(self.second, other.second))
        hi, lo = (self, other) if (self.top, self.by) >= (other.top, other.by) else (other, self)
        return Mark(hi.top, hi.by, max(hi.second, lo.top))

    def update(self) -> dict[str, Any]:
        """The ``$max`` fields that store it (``deliveredTop`` compares by seq, then id:
        BSON compares embedded documents field by field, in order)."""
        return {TOP: {"seq": self.top, "principalId": self.by}, OTHER: self.second}


def mark_of(doc: Mapping[str, Any] | None) -> Mark:
    """The mark kept in a totals document (none yet: nothing delivered by it)."""
    if not doc:
        return Mark()
    top = doc.get(TOP)
    other = doc.get(OTHER)
    seq = top.get("seq") if isinstance(top, Mapping) else None
    by = top.get("principalId") if isinstance(top, Mapping) else None
    if not isinstance(seq, int) or not isinstance(by, str):
        seq, by = 0, ""
    return Mark(seq, by, other if isinstance(other, int) else 0)


def status(stored: Any, seq: Any, author: Any, mark: Mark) -> Any:
    """A message's ``messageStatus`` as read: a stored ``sent`` that the mark delivers reads
    ``delivered``; anything else as stored."""
    if stored == SENT and isinstance(seq, int) and mark.delivers(seq, author):
        return DELIVERED
    return stored


def derive(data: dict[str, Any], mark: Mark) -> dict[str, Any]:
    """A message's wire (or stored) dict with its status as read (the same dict if it is
    unchanged, else a copy: the nested values may be shared)."""
    new = status(data.get("messageStatus"), data.get("seq"), data.get("createdBy"), mark)
    if new == data.get("messageStatus"):
        return data
    return {**data, "messageStatus": new}
