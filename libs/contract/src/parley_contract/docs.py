"""Markdown tables of the contract, generated from the registries (README, docs/protocol.md).

``python -m parley_contract.docs`` prints them; a test checks that both files contain them.
"""

from __future__ import annotations

import sys

from parley_contract import subjects
from parley_contract.errors import HTTP_STATUS, ErrorCode
from parley_contract.events import REGISTRY, Direction, Durability

_DIRECTION = {
    frozenset({Direction.COMMAND}): "client → server",
    frozenset({Direction.EVENT}): "server → client",
    frozenset({Direction.COMMAND, Direction.EVENT}): "both",
}


def events_table() -> str:
    rows = [
        "| event | direction | durability | who may send | what |",
        "|---|---|---|---|---|",
    ]
    for spec in REGISTRY.values():
        senders = ", ".join(sorted(k.value for k in spec.senders)) or "server only"
        durability = {
            Durability.DURABLE: "durable (`seq`)",
            Durability.EPHEMERAL: "ephemeral",
            Durability.SESSION: "—",
        }[spec.durability]
        rows.append(
            f"| `{spec.event.value}` | {_DIRECTION[spec.directions]} | {durability} "
            f"| {senders} | {spec.summary} |"
        )
    return "\n".join(rows)


def errors_table() -> str:
    rows = ["| code | HTTP status |", "|---|---|"]
    rows += [f"| `{code.value}` | {HTTP_STATUS[code]} |" for code in ErrorCode]
    return "\n".join(rows)


def subjects_table() -> str:
    rows = [
        "| subject | pattern | who |",
        "|---|---|---|",
        f"| commands | `{subjects.COMMANDS_WILDCARD}` (`parley.cmd.<resource>.<action>`) "
        f"| gateways and the bridge request; conversation service (queue "
        f"`{subjects.QUEUE_CONVERSATION}`) and bridge (`tool.call`) reply |",
        f"| conversation events | `{subjects.CONVERSATION_EVENTS_WILDCARD}` (durable, with "
        f"seq), `{subjects.CONVERSATION_EPHEMERAL_WILDCARD}` (ephemeral) "
        "| the conversation service publishes both; gateways (typing) and bridges (streams, "
        "agent online/offline) only ephemeral; gateways subscribe to both per joined "
        "conversation |",
        f"| principal events | `{subjects.principal_events('<kind>', '<principalId>')}` "
        "| notifications for one principal `(kind, id)` (added to a conversation) |",
        f"| queries | `{subjects.QUERY_CONVERSATIONS_WILDCARD}` "
        "| history and resume, answered by the conversation service |",
        f"| agent turns | `{subjects.AGENT_TURN}` (JetStream `{subjects.STREAM_AGENT_TURNS}`) "
        "| conversation service publishes; bridges consume (one durable consumer) |",
        f"| agent stop | `{subjects.AGENT_STOP}` | conversation service → every bridge |",
        f"| delivery reports | `{subjects.INTERNAL_DELIVERY}` | gateways publish (batched, "
        "no reply): how far each principal's connections received each conversation; the "
        "conversation service applies them (docs/protocol.md 3.6) |",
        f"| gateways | `{subjects.GATEWAY_SESSION_KICK_WILDCARD}`, "
        f"`{subjects.gateway_engineio('<instanceKey>')}` "
        "| a session resumed elsewhere is kicked; Socket.IO polling requests and upgrades "
        "for an Engine.IO session held by another gateway go to it |",
        f"| KV | `{subjects.KV_PRESENCE}`, `{subjects.KV_INSTANCES}`, `{subjects.KV_SESSIONS}`, "
        f"`{subjects.KV_AGENTS}`, `{subjects.KV_TURNS}` | presence, gateway heartbeats, "
        "sessions, agents, running agent turns (TTL) |",
    ]
    return "\n".join(rows)


def main() -> int:
    out = sys.stdout
    out.write("### Events\n\n" + events_table() + "\n\n")
    out.write("### Error codes\n\n" + errors_table() + "\n\n")
    out.write("### NATS subjects\n\n" + subjects_table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
