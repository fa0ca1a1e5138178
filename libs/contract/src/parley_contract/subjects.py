"""The one registry of NATS subject names, queue groups and KV buckets.

No other module spells a subject string: services call these functions. Conversation and
principal ids are validated by :func:`parley_contract.ids.check_id` before they reach a
subject, so a client can never inject ``.``, ``*`` or ``>`` into one.
"""

from __future__ import annotations

from typing import Final

from parley_contract.events import Event

PREFIX: Final = "parley"

# Queue groups: every replica of a service joins its group, so each request is handled once.
QUEUE_CONVERSATION: Final = "conversation"
QUEUE_AGENT_BRIDGE: Final = "agent-bridge"

# JetStream KV buckets (design: presence without Redis).
KV_PRESENCE: Final = "parley_presence"  # key: <kind>.<principalId>.<instanceId> → connection count
KV_INSTANCES: Final = "parley_instances"  # key: <instanceId> → heartbeat JSON
KV_SESSIONS: Final = "parley_sessions"  # key: <sessionId> → principal + joined conversations
KV_AGENTS: Final = "parley_agents"  # key: <agentId>.<bridgeInstanceId> → agent availability
KV_SEQUENCES: Final = "parley_sequences"  # key: <conversationId> → {epoch, seq} published
KV_TURNS: Final = "parley_turns"  # key: <conversationId> → the running agent turn (turnstate)
# Conversation affinity (partitions.py): p.<n> → the owning replica's lease, m.<instanceId> →
# a replica's heartbeat; every key expires after the lease TTL unless refreshed.
KV_PARTITIONS: Final = "parley_partitions"


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket (its cluster info: leader, replicas)."""
    return f"KV_{bucket}"


def kv_key_subject(bucket: str, key: str) -> str:
    """The subject a KV put of ``key`` publishes to (JetStream's ``$KV.<bucket>.<key>``).

    For writes that need no acknowledgement: a plain publish there is a KV put without the
    round trip (the gateway's periodic session and presence writes).
    """
    return f"$KV.{bucket}.{key}"


# NATS header on an ephemeral frame a gateway publishes for one of its connections (typing):
# the session id of that connection, which does not get the frame back. Never sent to clients.
HEADER_ORIGIN: Final = "Parley-Origin"
# NATS headers on a durable frame the conversation service publishes: its conversation, seq,
# epoch and event name, so that a gateway orders and delivers it without decoding the body.
HEADER_CONVERSATION: Final = "Parley-Conversation"
HEADER_SEQ: Final = "Parley-Seq"
HEADER_EPOCH: Final = "Parley-Epoch"
HEADER_EVENT: Final = "Parley-Event"


def durable_headers(conversation_id: str, seq: int, epoch: int, event: str) -> dict[str, str]:
    """The headers of a durable frame (see HEADER_SEQ)."""
    return {
        HEADER_CONVERSATION: conversation_id,
        HEADER_SEQ: str(seq),
        HEADER_EPOCH: str(epoch),
        HEADER_EVENT: event,
    }


# JetStream stream of agent turns (work queue so each user message is answered once).
STREAM_AGENT_TURNS: Final = "PARLEY_AGENT_TURNS"


def _token(event: Event) -> str:
    # "message:send" → "message.send": NATS-style tokens, so "parley.cmd.message.>" works.
    return event.value.replace(":", ".")


def command(event: Event) -> str:
    """Request/reply subject of a command handled by the conversation service."""
    return f"{PREFIX}.cmd.{_token(event)}"


COMMANDS_WILDCARD: Final = f"{PREFIX}.cmd.>"


def partition_command(event: Event, partition: int) -> str:
    """A command of one conversation partition (parley_contract.partitions): only the
    replica that owns the partition subscribes to it (queue group conversation)."""
    return f"{PREFIX}.cmd.p{partition}.{_token(event)}"


def partition_query(query: str, partition: int) -> str:
    """A conversation-scoped query (``QUERY_*``) sent to one partition's owner, under the
    partition's command subjects (one subscription per owned partition takes both):
    ``parley.query.conversation.get`` → ``parley.cmd.p<n>.q.conversation.get``."""
    head = f"{PREFIX}.query."
    if not query.startswith(head):
        raise ValueError(f"not a query subject: {query}")
    return f"{PREFIX}.cmd.p{partition}.q.{query[len(head) :]}"


def partition_batch(event: Event, partition: int) -> str:
    """A batch of one command (``routes.send_batch_subject``) for one partition's owner.
    Not under ``partition_commands``: a replica that does not serve batches (an older one,
    mid-upgrade) is no responder for it, rather than a responder that never answers, so
    the gateway learns at once to send the commands one by one."""
    return f"{PREFIX}.cmd.batch.p{partition}.{_token(event)}"


def partition_batches(partition: int) -> str:
    """Every batch of one partition (the owner's second subscription per partition)."""
    return f"{PREFIX}.cmd.batch.p{partition}.>"


def partition_commands(partition: int) -> str:
    """Every command (and conversation-scoped query) of one partition: one subscription
    per owned partition."""
    return f"{PREFIX}.cmd.p{partition}.>"


def conversation_events(conversation_id: str) -> str:
    """Everything a conversation's members must see, durable (with seq) and ephemeral."""
    return f"{PREFIX}.conv.{conversation_id}.evt"


CONVERSATION_EVENTS_WILDCARD: Final = f"{PREFIX}.conv.*.evt"


def conversation_ephemeral(conversation_id: str) -> str:
    """Ephemeral frames (no seq) from gateways (typing) and agent bridges (stream deltas,
    agent online/offline). Apart from the durable subject so that NATS permissions can keep
    those roles from publishing durable events (nats_auth.py); gateways drop a frame with a
    seq that arrives here."""
    return f"{PREFIX}.conv.{conversation_id}.eph"


CONVERSATION_EPHEMERAL_WILDCARD: Final = f"{PREFIX}.conv.*.eph"


def conversation_feed(conversation_id: str) -> str:
    """What a gateway subscribes to per joined conversation: durable and ephemeral."""
    return f"{PREFIX}.conv.{conversation_id}.*"


def is_ephemeral_subject(subject: str) -> bool:
    return subject.endswith(".eph")


def principal_events(kind: str, principal_id: str) -> str:
    """Events addressed to one principal wherever it is connected (e.g. added to a conversation).

    A principal is ``(kind, id)``: the user ``x`` and the agent ``x`` have two subjects.
    ``kind`` is a ``PrincipalKind`` (a str enum; its value is the token).
    """
    return f"{PREFIX}.principal.{kind}.{principal_id}.evt"


# Queries answered by the conversation service (request/reply, queue group conversation).
QUERY_CONVERSATIONS_LIST: Final = f"{PREFIX}.query.conversations.list"
QUERY_CONVERSATION_GET: Final = f"{PREFIX}.query.conversation.get"
QUERY_MESSAGES_LIST: Final = f"{PREFIX}.query.messages.list"
QUERY_EVENTS_SINCE: Final = f"{PREFIX}.query.events.since"  # resume and gap fill
QUERY_SEARCH: Final = f"{PREFIX}.query.search"  # GET /v1/search: the caller's conversations
# An attachment's record if the principal may read it (gateways, before serving bytes).
QUERY_ATTACHMENT_GET: Final = f"{PREFIX}.query.attachment.get"
QUERY_CONVERSATIONS_WILDCARD: Final = f"{PREFIX}.query.>"

# Gateways → conversation service, no reply: which principal's connections received a
# conversation's durable frames up to which seq (delivery receipts, batched per interval).
INTERNAL_DELIVERY: Final = f"{PREFIX}.internal.delivery"
# Gateways → conversation service: may this principal upload here / store the upload's record.
ATTACHMENT_REGISTER: Final = f"{PREFIX}.internal.attachment.register"

# Agent bridge.
AGENT_TURN: Final = f"{PREFIX}.agent.turn"  # a user message in a conversation with an agent
AGENT_STOP: Final = f"{PREFIX}.agent.stop"  # message:stop fan-out to every bridge replica
AGENT_TOOL_CALL: Final = f"{PREFIX}.agent.tool.call"  # tool:call request/reply

# Gateways.
GATEWAY_SESSION_KICK_PREFIX: Final = f"{PREFIX}.gateway.session"


def gateway_session_kick(session_id: str) -> str:
    """Tells whichever gateway still holds a session that it was resumed elsewhere."""
    return f"{GATEWAY_SESSION_KICK_PREFIX}.{session_id}.kick"


# Every gateway listens to all kicks (rare); the body names the session and the sender.
GATEWAY_SESSION_KICK_WILDCARD: Final = f"{GATEWAY_SESSION_KICK_PREFIX}.*.kick"


def gateway_engineio(instance_key: str) -> str:
    """Socket.IO long-polling requests forwarded to the gateway that holds the session.

    ``instance_key`` is the gateway's 16 hex digit key (the first characters of every
    Engine.IO session id it issues), so a poll may land on any gateway (no sticky sessions).
    """
    return f"{PREFIX}.gateway.eio.{instance_key}"
