"""The audience rule shared by the conversation service and the gateways (issue 12)."""

from __future__ import annotations

from parley_contract import envelopes, jsonutil
from parley_contract.access import Audience, audience_change
from parley_contract.events import Event, PrincipalKind

U, A, S = PrincipalKind.USER, PrincipalKind.AGENT, PrincipalKind.SERVICE

DOC = {
    "_id": "c1",
    "status": "active",
    "agentId": "bot",
    "participants": [
        {"userId": "alice", "role": "user", "joinedAt": "2026-01-01T00:00:00.000Z"},
        {"userId": "carol", "role": "user", "joinedAt": "x", "leftAt": "2026-01-02T00:00:00Z"},
        {"agentId": "helper", "role": "agent", "joinedAt": "x"},
    ],
}


def test_kind_and_id_both_count() -> None:
    a = Audience.of(DOC)
    assert a.admits(U, "alice") and not a.admits(A, "alice")  # a user is not an agent
    assert a.admits(A, "helper") and not a.admits(U, "helper")
    assert a.admits(A, "bot") and not a.admits(U, "bot")  # the assigned agent
    assert not a.admits(U, "carol")  # left
    assert a.admits(S, "anything")


def test_closed_or_deleted_ends_the_feed() -> None:
    closed = Audience.of({**DOC, "status": "closed"})
    assert not closed.admits(U, "alice") and not closed.admits(A, "bot")
    assert Audience.of({**DOC, "status": "closed"}, closed_ends_feed=False).admits(U, "alice")
    assert not Audience.of("garbage").admits(U, "alice")


def test_only_audience_events_are_parsed() -> None:
    upd = envelopes.event_frame(Event.CONVERSATION_UPDATED, DOC, conversation_id="c1", seq=3)
    change = audience_change(jsonutil.dumps(upd))
    assert change is not None and change.admits(U, "alice") and not change.admits(U, "carol")
    gone = envelopes.event_frame(Event.CONVERSATION_DELETED, {"_id": "c1"}, seq=4)
    deleted = audience_change(jsonutil.dumps(gone))
    assert deleted is not None and not deleted.admits(U, "alice")
    # A message that merely mentions the event name changes nothing.
    msg = envelopes.event_frame(Event.MESSAGE_NEW, {"content": "conversation:updated"}, seq=5)
    assert audience_change(jsonutil.dumps(msg)) is None
    assert audience_change(b"conversation:deleted not json") is None
