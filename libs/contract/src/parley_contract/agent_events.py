"""Data shapes of the agent bridge's ephemeral events (published without ``seq``).

Published by the agent bridge on ``subjects.conversation_ephemeral(cid)`` as
``envelopes.event_frame(Event.X, data, conversation_id=cid)``; never stored, never replayed.
The persisted ``message:new`` that follows a stream is the single source of truth.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class _AgentEvent(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class AgentThinking(_AgentEvent):
    """``agent:thinking``: the agent started working on a user message."""

    conversation_id: str
    agent_id: str
    agent_name: str | None = None
    parent_message_id: str | None = None  # the user message being answered
    status: str = "thinking"  # 'thinking' | 'reasoning'


class AgentToolCalling(_AgentEvent):
    """``agent:tool-calling``: the agent is running a tool now."""

    conversation_id: str
    agent_id: str
    tool_call_id: str
    tool_name: str
    arguments: str  # JSON string, as in toolCalls[].function.arguments
    parent_message_id: str | None = None


class StreamStart(_AgentEvent):
    """``message:stream-start``: an agent answer starts streaming."""

    stream_id: str
    conversation_id: str
    agent_id: str
    parent_message_id: str | None = None


class StreamDelta(_AgentEvent):
    """``message:stream-delta``: the next chunk; ``index`` counts from 0 without gaps."""

    stream_id: str
    delta: str
    index: int
    # Sent by a gateway to a connection that joins mid-stream: ``delta`` is all the text of
    # deltas 0..index (replaces what the client had of this stream).
    snapshot: bool | None = None


class StreamEnd(_AgentEvent):
    """``message:stream-end``: no more deltas; ``message:new`` with ``messageId`` follows
    (or preceded, when the store answered first). finishReason: 'stop' | 'tool_calls' |
    'aborted' | 'error' | 'length'."""

    stream_id: str
    finish_reason: str
    message_id: str | None = None


class AgentPresence(_AgentEvent):
    """``agent:online`` / ``agent:offline``: whether an agent can answer."""

    agent_id: str
    name: str | None = None
    instance_id: str | None = None
    conversation_id: str | None = None


class AgentAvailability(_AgentEvent):
    """Value of the ``subjects.KV_AGENTS`` key ``<agentId>.<bridgeInstanceId>`` (TTL heartbeat)."""

    agent_id: str
    name: str
    description: str = ""
    model: str
    models: list[str] = []
    online: bool = True
    instance_id: str
    updated_at: str
    extra: dict[str, Any] | None = None
