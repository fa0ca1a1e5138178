"""Least privilege on NATS: what each service role may publish and subscribe, derived from
the subject registry (subjects.py), and the nats-server ``authorization`` block built from it.

Each role gets its own inbox prefix (``_INBOX_<role>``): a role can subscribe to its own
replies only, never to another role's. Replies to requests a role serves go out through
``allow_responses`` (only to the inbox of a request it received) and, for the roles that
serve another role's requests, to that role's inboxes (``REPLIES_TO``): after a reconnect to
another NATS node, ``allow_responses`` no longer covers the requests received before it
(the new node never saw them), the replies were refused and each requester waited out its
timeout (issue 19, ``make faults-cluster``). No role may publish into its own inboxes or
those of a role it does not answer.
"""

from __future__ import annotations

import json
from typing import Final, Literal

from parley_contract import subjects as s
from parley_contract.events import Event

Role = Literal["gateway", "conversation", "agent-bridge"]
ROLES: Final[tuple[Role, ...]] = ("gateway", "conversation", "agent-bridge")


# Who answers whose requests: gateways and bridges send commands and queries to the
# conversation service; gateways send tool calls to bridges.
REPLIES_TO: Final[dict[Role, tuple[Role, ...]]] = {
    "gateway": (),
    "conversation": ("gateway", "agent-bridge"),
    "agent-bridge": ("gateway",),
}


def inbox_prefix(role: Role) -> str:
    return f"_INBOX_{role.replace('-', '_')}"


def _kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",  # watch / keys (ordered consumers)
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",  # keys (parley_runtime.jetstream.live_keys)
    ]


def _kv_write(bucket: str) -> list[str]:
    return [
        *_kv_read(bucket),
        f"$JS.API.STREAM.CREATE.KV_{bucket}",
        f"$JS.API.STREAM.UPDATE.KV_{bucket}",  # replicas and TTL (parley_runtime.jetstream)
        s.kv_key_subject(bucket, ">"),
    ]


def _stream_create(stream: str) -> list[str]:
    """Whichever service starts first creates it, and updates its replicas
    (parley_runtime.jetstream)."""
    return [
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
    ]


def _stream_consume(stream: str) -> list[str]:
    return [
        *_stream_create(stream),
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def permissions(role: Role) -> dict[str, list[str]]:
    """``{"publish": [...], "subscribe": [...]}`` for one role."""
    conv_events = s.conversation_events("*")
    conv_ephemeral = s.conversation_ephemeral("*")
    principal_events = s.principal_events("*", "*")
    js_common = ["$JS.API.INFO"]
    if role == "gateway":
        publish = [
            s.COMMANDS_WILDCARD,
            s.QUERY_CONVERSATIONS_WILDCARD,
            s.ATTACHMENT_REGISTER,  # uploads (attachments.py)
            conv_ephemeral,  # typing
            s.INTERNAL_DELIVERY,  # delivery receipts (batched)
            s.gateway_session_kick("*"),
            s.gateway_engineio("*"),
            *js_common,
            *_kv_write(s.KV_PRESENCE),
            *_kv_write(s.KV_INSTANCES),
            *_kv_write(s.KV_SESSIONS),
            *_kv_read(s.KV_AGENTS),
            # Running agent turns: read; created (and scaled to the deployment's replicas,
            # parley_runtime.jetstream) by whoever starts first.
            *_kv_read(s.KV_TURNS),
            f"$JS.API.STREAM.CREATE.KV_{s.KV_TURNS}",
            f"$JS.API.STREAM.UPDATE.KV_{s.KV_TURNS}",
        ]
        subscribe = [
            s.conversation_feed("*"),
            principal_events,
            s.GATEWAY_SESSION_KICK_WILDCARD,
            s.gateway_engineio("*"),
        ]
    elif role == "conversation":
        publish = [
            conv_events,
            conv_ephemeral,
            principal_events,
            s.AGENT_STOP,
            s.AGENT_TURN,
            *js_common,
            *_stream_create(s.STREAM_AGENT_TURNS),
            *_kv_write(s.KV_SEQUENCES),
            *_kv_write(s.KV_PARTITIONS),  # partition leases (docs/affinity.md)
            *_kv_write(s.KV_TURNS),
            *_kv_read(s.KV_AGENTS),
            *_kv_read(s.KV_PRESENCE),  # agents connected as clients (agents.AgentDirectory)
        ]
        subscribe = [s.COMMANDS_WILDCARD, s.QUERY_CONVERSATIONS_WILDCARD, f"{s.PREFIX}.internal.>"]
    else:
        publish = [
            s.COMMANDS_WILDCARD,
            s.QUERY_CONVERSATIONS_WILDCARD,
            conv_ephemeral,  # stream deltas, agent online/offline
            *js_common,
            *_stream_consume(s.STREAM_AGENT_TURNS),
            *_kv_write(s.KV_AGENTS),
            *_kv_write(s.KV_TURNS),
        ]
        subscribe = [s.AGENT_STOP, s.AGENT_TOOL_CALL, s.command(Event.TOOL_CALL)]
    subscribe.append(f"{inbox_prefix(role)}.>")
    publish += [f"{inbox_prefix(r)}.>" for r in REPLIES_TO[role]]
    return {"publish": publish, "subscribe": subscribe}


def server_authorization(passwords: dict[Role, str], admin_password: str | None = None) -> str:
    """The nats-server ``authorization { users = [...] }`` block (JSON is valid NATS config).

    ``admin_password``: one more user, ``admin``, allowed everything (tools and tests only).
    """
    users: list[dict[str, object]] = []
    for role in ROLES:
        perms = permissions(role)
        users.append(
            {
                "user": role,
                "password": passwords[role],
                "permissions": {
                    "publish": {"allow": perms["publish"]},
                    "subscribe": {"allow": perms["subscribe"]},
                    "allow_responses": True,
                },
            }
        )
    if admin_password is not None:
        users.append({"user": "admin", "password": admin_password})
    return "authorization " + json.dumps({"users": users}, indent=2)
