"""Service-to-service messages on NATS (never seen by clients).

A command travels from a gateway (or the agent bridge) to the conversation service as a
:class:`CommandRequest`; the reply is the design doc's success or error envelope
(``envelopes.ok`` / ``envelopes.fail``), which the gateway wraps with the command's ``event``
and ``id``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from parley_contract.commands import CommandData
from parley_contract.events import PrincipalKind
from parley_contract.ids import SafeId
from parley_contract.limits import INT64_MAX


class Principal(BaseModel):
    """Who acts: from a verified JWT (users, agents) or a service's own identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: PrincipalKind
    name: str | None = None

    def wire(self) -> dict[str, Any]:
        """``model_dump(mode="json")`` built directly (a third of its cost: the gateway
        writes it into every hello and session entry); ``test_principal_wire`` keeps both
        equal and fails when a field is added."""
        return {"id": self.id, "kind": self.kind.value, "name": self.name}


# Agent-bridge replicas refresh their presence key in subjects.KV_AGENTS at least this often;
# the conversation service counts an agent whose replicas all went quiet for three times this
# as offline and fails its open turns visibly (issue 11).
AGENT_LIVENESS_SECONDS = 2.0


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal: Principal
    data: dict[str, Any] = Field(default_factory=dict)
    # The gateway instance that relayed it (logs, metrics); None for services.
    instance_id: str | None = Field(default=None, alias="instanceId")
    # Exactly-once across retries (issue 11): the gateway sends the same key again when it
    # retries a command on another replica (the client's clientMessageId for message:send,
    # else one it makes). A service applies a command with a key at most once per principal
    # and answers a repeat with the first answer.
    idempotency_key: str | None = Field(
        default=None, alias="idempotencyKey", min_length=1, max_length=128
    )


class RouteRequest(BaseModel):
    """A :class:`CommandRequest` whose ``data`` is the route's payload model: each route
    (parley_contract.routes) builds its own subclass, so a service decodes the request and
    validates the client's data in one pass over the bytes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    principal: Principal
    data: CommandData
    instance_id: str | None = Field(default=None, alias="instanceId")
    idempotency_key: str | None = Field(
        default=None, alias="idempotencyKey", min_length=1, max_length=128
    )


# Most messages one batched send carries (a gateway sends more as several requests), and
# most bytes of a batch's data (the gateway's own cap; the service's max_request_bytes holds).
MAX_SEND_BATCH = 64
MAX_SEND_BATCH_BYTES = 128 * 1024


class SendBatchItem(BaseModel):
    """One ``message:send`` of a :class:`SendBatchRequest`: the client's ``data`` as it came
    (validated by the service, item by item: one bad message fails alone) and its own
    idempotency key (the clientMessageId, or the gateway's), as its single request has."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    data: dict[str, Any]
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=128)


class SendBatchRequest(BaseModel):
    """Consecutive ``message:send``s of one connection to one conversation, in their order,
    as one request (``routes.send_batch_subject``, gateway → the partition's owner): queued
    in the gateway behind a send in flight, they are stored in this order and each is
    answered as its single request would have been (:class:`SendBatchReply`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    principal: Principal
    conversation_id: str = Field(alias="conversationId", min_length=1, max_length=256)
    items: list[SendBatchItem] = Field(min_length=1, max_length=MAX_SEND_BATCH)
    instance_id: str | None = Field(default=None, alias="instanceId")


class SendBatchReply(BaseModel):
    """The data of a batched send's reply: one envelope per item, at the item's index (the
    envelope its single ``message:send`` request would have been answered with)."""

    model_config = ConfigDict(extra="forbid")
    results: list[dict[str, Any]]


class EventsSinceRequest(BaseModel):
    """Durable events of one conversation with afterSeq < seq <= untilSeq (resume, gap fill)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    principal: Principal
    conversation_id: str = Field(alias="conversationId")
    after_seq: int = Field(alias="afterSeq", ge=0, le=INT64_MAX)
    until_seq: int | None = Field(default=None, alias="untilSeq", ge=0, le=INT64_MAX)
    limit: int = Field(default=500, ge=1, le=1000)


# Most principals one batched rejoin carries (a gateway sends more as several requests).
MAX_REJOIN_PRINCIPALS = 500


class RejoinRequest(BaseModel):
    """The batched rejoin of resumed sessions (``routes.REJOIN_SUBJECT``, gateway →
    conversation service): may each of these principals join this conversation again, and
    where does it stand. One request for all the members of one conversation that resume on
    one gateway at about the same time (a reconnect storm), instead of one join each."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    conversation_id: SafeId = Field(alias="conversationId")
    principals: list[Principal] = Field(min_length=1, max_length=MAX_REJOIN_PRINCIPALS)
    instance_id: str | None = Field(default=None, alias="instanceId")


class RejoinMember(BaseModel):
    """One principal's answer in a :class:`RejoinReply`, at the request's index: admitted
    (with its own receipts, as a single join's reply carries them) or the error envelope
    body a single join would have answered."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ok: bool
    unread_count: int | None = Field(default=None, alias="unreadCount")
    read_seq: int | None = Field(default=None, alias="readSeq")
    error: dict[str, Any] | None = None


class RejoinReply(BaseModel):
    """The data of a batched rejoin's reply: what every admitted member shares (the
    conversation, lastSeq, epoch, read cursors) and one :class:`RejoinMember` per principal."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    conversation: dict[str, Any] | None = None
    last_seq: int = Field(alias="lastSeq")
    epoch: int = 0
    cursors: list[dict[str, Any]] | None = None
    members: list[RejoinMember]


class AgentTurn(BaseModel):
    """Work for the agent bridge: answer this user message (published on subjects.AGENT_TURN)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    conversation_id: str = Field(alias="conversationId")
    agent_id: str = Field(alias="agentId")
    message_id: str = Field(alias="messageId")
    seq: int


class AgentStop(BaseModel):
    """message:stop fan-out (published on subjects.AGENT_STOP, every bridge replica listens):
    cancel the running agent turn of this conversation, keeping the partial answer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    conversation_id: str = Field(alias="conversationId")
    principal: Principal


MAX_DELIVERY_ITEMS = 2000


class DeliveryItem(BaseModel):
    """``(kind, principalId)``'s connections received ``conversationId`` up to ``seq``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    conversation_id: SafeId = Field(alias="conversationId")
    kind: PrincipalKind
    principal_id: SafeId = Field(alias="principalId")
    seq: int = Field(ge=1, le=INT64_MAX)


class DeliveryReport(BaseModel):
    """A gateway's delivery receipts (published on ``subjects.INTERNAL_DELIVERY``, no reply;
    docs/protocol.md 3.6)."""

    model_config = ConfigDict(extra="forbid")
    items: list[DeliveryItem] = Field(max_length=MAX_DELIVERY_ITEMS)
