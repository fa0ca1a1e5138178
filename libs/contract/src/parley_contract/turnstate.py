"""The state of a conversation's running agent turn, so a client that joins or resumes
mid-turn starts from where the turn is (issue 13 point 7; docs/protocol.md 5.5).

One model, rebuilt from the turn's own frames, used on both sides:

- the agent bridge applies every ephemeral frame it publishes and writes the state to the KV
  bucket ``subjects.KV_TURNS`` (key: the conversation id; at most every
  ``WRITE_INTERVAL_SECONDS`` while text streams, at once on a status change, deleted when
  the turn ends); the conversation service writes the ``queued`` state of a new turn;
- every gateway subscribed to the conversation applies the frames it receives (after
  loading the KV state when it subscribes) and, when a connection joins, sends it
  :meth:`TurnState.snapshot` before any live frame: the last status (``agent:thinking`` /
  ``agent:tool-calling``), and for a stream in progress its ``message:stream-start`` and ONE
  ``message:stream-delta`` with all the text so far, ``index`` = the last index it covers and
  ``snapshot: true``. Live deltas continue at the next index: no gap, no duplicate.
"""

from __future__ import annotations

from typing import Any

from parley_contract import envelopes
from parley_contract.events import Event

WRITE_INTERVAL_SECONDS = 0.1  # the bridge's KV writes while text streams
KV_TTL_SECONDS = 120.0  # a turn whose bridge died is forgotten after this (refreshed while alive)
STATUS_EVENTS = frozenset({Event.AGENT_THINKING.value, Event.AGENT_TOOL_CALLING.value})
TURN_EVENTS = STATUS_EVENTS | {
    Event.MESSAGE_STREAM_START.value,
    Event.MESSAGE_STREAM_DELTA.value,
    Event.MESSAGE_STREAM_END.value,
    Event.MESSAGE_NEW.value,
}
_FINAL_TYPES = frozenset({"text", "error"})


class TurnState:
    """Where the running turn of one conversation is; empty when no turn runs."""

    __slots__ = ("broken", "next", "parent", "parts", "status", "stream")

    def __init__(self) -> None:
        self.status: tuple[str, dict[str, Any]] | None = None  # (event, data) of the last one
        self.stream: dict[str, Any] | None = None  # data of message:stream-start
        self.parts: list[str] = []  # deltas 0..next-1
        self.next = 0  # the next delta index expected
        self.parent: str | None = None  # the user message being answered
        self.broken = False  # a delta was missed: the text so far is not known

    @property
    def active(self) -> bool:
        return self.status is not None or self.stream is not None

    def clear(self) -> None:
        self.status = None
        self.stream = None
        self.parts = []
        self.next = 0
        self.parent = None
        self.broken = False

    def apply(self, event: str, data: Any) -> None:
        """One frame of the conversation (ephemeral turn events and message:new)."""
        if not isinstance(data, dict):
            return
        if event in STATUS_EVENTS:
            parent = data.get("parentMessageId")
            if parent != self.parent and event == Event.AGENT_THINKING.value:
                self.clear()  # a new turn
            self.parent = parent if isinstance(parent, str) else self.parent
            self.status = (event, data)
        elif event == Event.MESSAGE_STREAM_START.value:
            self.stream = data
            self.parts, self.next, self.broken = [], 0, False
            parent = data.get("parentMessageId")
            if isinstance(parent, str):
                self.parent = parent
        elif event == Event.MESSAGE_STREAM_DELTA.value:
            self._delta(data)
        elif event == Event.MESSAGE_STREAM_END.value:
            if self.stream is not None and data.get("streamId") == self.stream.get("streamId"):
                self.stream, self.parts, self.next, self.broken = None, [], 0, False
                if data.get("finishReason") != "tool_calls":
                    self.clear()
        elif event == Event.MESSAGE_NEW.value and (
            self.parent is not None
            and data.get("parentMessageId") == self.parent
            and data.get("role") == "assistant"
            and data.get("messageType") in _FINAL_TYPES
        ):
            self.clear()

    def _delta(self, data: dict[str, Any]) -> None:
        if self.stream is None or data.get("streamId") != self.stream.get("streamId"):
            return
        index, delta = data.get("index"), data.get("delta")
        if type(index) is not int or not isinstance(delta, str):
            return
        if data.get("snapshot"):
            if index + 1 >= self.next:
                self.parts, self.next, self.broken = [delta], index + 1, False
        elif index == self.next:
            self.parts.append(delta)
            self.next += 1
        elif index > self.next:
            self.broken = True  # keep counting from the live ones; the snapshot is partial
            self.parts.append(delta)
            self.next = index + 1

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def snapshot(self, conversation_id: str) -> list[dict[str, Any]]:
        """The frames that bring a joining connection to this state (empty: no turn)."""
        frames: list[dict[str, Any]] = []
        if self.status is not None:
            event, data = self.status
            frames.append(
                envelopes.event_frame(Event(event), data, conversation_id=conversation_id)
            )
        if self.stream is not None:
            frames.append(
                envelopes.event_frame(
                    Event.MESSAGE_STREAM_START, self.stream, conversation_id=conversation_id
                )
            )
            if self.next > 0:
                delta = {
                    "streamId": self.stream.get("streamId"),
                    "delta": self.text,
                    "index": self.next - 1,
                    "snapshot": True,
                }
                frames.append(
                    envelopes.event_frame(
                        Event.MESSAGE_STREAM_DELTA, delta, conversation_id=conversation_id
                    )
                )
        return frames

    # ------------------------------------------------------------------ KV form

    def to_json(self) -> dict[str, Any]:
        return {
            "status": list(self.status) if self.status is not None else None,
            "stream": self.stream,
            "text": self.text,
            "next": self.next,
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, doc: Any) -> TurnState:
        state = cls()
        if not isinstance(doc, dict):
            return state
        status = doc.get("status")
        if (
            isinstance(status, list)
            and len(status) == 2
            and status[0] in STATUS_EVENTS
            and isinstance(status[1], dict)
        ):
            state.status = (status[0], status[1])
        stream = doc.get("stream")
        if isinstance(stream, dict) and isinstance(stream.get("streamId"), str):
            state.stream = stream
            text, nxt = doc.get("text"), doc.get("next")
            if isinstance(text, str) and type(nxt) is int and nxt > 0:
                state.parts, state.next = [text], nxt
        parent = doc.get("parent")
        state.parent = parent if isinstance(parent, str) else None
        return state
