"""Who may follow a conversation: one rule for the conversation service and the gateways.

A principal is its ``(kind, id)`` pair: a user and an agent with the same id are two
principals. A conversation's audience is

- every *active* user participant (``participants[].userId``, no ``leftAt``), as a user;
- every active agent participant (``participants[].agentId``) and the assigned ``agentId``,
  as agents;
- Parley's own services (kind ``service``), always;

and nobody once the conversation is ``closed`` or deleted (its live feed ends; the
conversation service decides what may still be read).

The conversation service authorizes every command and query by the same rule (its
``domain.can_access``; closed conversations stay readable there). The gateways read the
audience off each durable ``conversation:updated`` / ``conversation:deleted`` frame
(:func:`audience_change`, parsed once per gateway) and evict the connections it no longer
admits, at exactly that ``seq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley_contract import jsonutil
from parley_contract.events import Event, PrincipalKind

# The durable events after which a conversation's audience may have changed.
AUDIENCE_EVENTS = (Event.CONVERSATION_UPDATED, Event.CONVERSATION_DELETED)
_MARKERS = tuple(e.value.encode() for e in AUDIENCE_EVENTS)


@dataclass(frozen=True, slots=True)
class Audience:
    """The principals that may follow a conversation at one point of its history."""

    users: frozenset[str]
    agents: frozenset[str]
    open: bool = True  # False: closed or deleted, the live feed ends for everyone

    def admits(self, kind: PrincipalKind, principal_id: str) -> bool:
        if kind is PrincipalKind.SERVICE:
            return True
        if not self.open:
            return False
        if kind is PrincipalKind.AGENT:
            return principal_id in self.agents
        return principal_id in self.users

    @classmethod
    def nobody(cls) -> Audience:
        return cls(frozenset(), frozenset(), open=False)

    @classmethod
    def of(cls, doc: Any, *, closed_ends_feed: bool = True) -> Audience:
        """The audience of a conversation document as the wire carries it (camelCase)."""
        if not isinstance(doc, dict):
            return cls.nobody()
        users: set[str] = set()
        agents: set[str] = set()
        parts = doc.get("participants")
        for p in parts if isinstance(parts, list) else ():
            if not isinstance(p, dict) or p.get("leftAt") is not None:
                continue
            uid, aid = p.get("userId"), p.get("agentId")
            if isinstance(uid, str) and uid:
                users.add(uid)
            elif isinstance(aid, str) and aid:
                agents.add(aid)
        assigned = doc.get("agentId")
        if isinstance(assigned, str) and assigned:
            agents.add(assigned)
        closed = doc.get("status") == "closed" or doc.get("deletedAt") is not None
        return cls(frozenset(users), frozenset(agents), open=not (closed and closed_ends_feed))


def audience_change(frame: bytes) -> Audience | None:
    """The audience a durable frame leaves its conversation with, if it may have changed it.

    ``None`` for every other frame; a cheap byte test first, so only frames that mention one
    of :data:`AUDIENCE_EVENTS` are parsed.
    """
    if not any(m in frame for m in _MARKERS):
        return None
    try:
        doc = jsonutil.loads(frame)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    event = doc.get("event")
    if event == Event.CONVERSATION_DELETED.value:
        return Audience.nobody()
    if event != Event.CONVERSATION_UPDATED.value:
        return None
    return Audience.of(doc.get("data"))
