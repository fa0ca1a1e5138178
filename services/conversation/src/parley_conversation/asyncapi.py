"""The NATS side as an AsyncAPI document (FastStream generates it; payload schemas added).

``python -m parley_conversation.asyncapi [path]`` writes it (default
``services/conversation/docs/asyncapi.json``); a running replica serves it at
``/asyncapi.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI
from pydantic import BaseModel

from parley_contract import jsonutil
from parley_contract.envelopes import ErrorEnvelope, ServerFrame, SuccessEnvelope
from parley_contract.internal import AgentStop, AgentTurn, CommandRequest, EventsSinceRequest
from parley_contract.models import Conversation, Message
from parley_conversation import service as service_module
from parley_conversation.service import ConversationService
from parley_conversation.settings import Settings

DESCRIPTION = """\
The conversation service (queue group `conversation`). Requests are
`CommandRequest` JSON (`EventsSinceRequest` for `parley.query.events.since`); every reply is a
`SuccessEnvelope` or an `ErrorEnvelope`. Durable events are published as `ServerFrame`s on
`parley.conv.<conversationId>.evt`, agent turns as `AgentTurn` on JetStream
`parley.agent.turn`, `message:stop` as `AgentStop` on `parley.agent.stop`.
Reply shapes: services/conversation/README.md.
"""

SCHEMAS: list[type[BaseModel]] = [
    CommandRequest,
    EventsSinceRequest,
    SuccessEnvelope,
    ErrorEnvelope,
    ServerFrame,
    AgentTurn,
    AgentStop,
    Conversation,
    Message,
    service_module.ListConversationsQuery,
    service_module.GetConversationQuery,
    service_module.ListMessagesQuery,
]


def build(svc: ConversationService) -> dict[str, Any]:
    spec = AsyncAPI(
        svc.broker,
        title="Parley conversation service",
        version="1.0.0",
        description=DESCRIPTION,
    ).to_specification()
    doc: dict[str, Any] = spec.to_jsonable()
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in SCHEMAS:
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
    # The handlers read raw bytes (to answer malformed JSON with an envelope), so FastStream
    # sees no payload type: point each request at its real schema and describe the reply.
    for name, message in doc.get("components", {}).get("messages", {}).items():
        request = "EventsSinceRequest" if "events.since" in name else "CommandRequest"
        message["payload"] = {"$ref": f"#/components/schemas/{request}"}
        message["description"] = (
            "Reply: SuccessEnvelope (data as in services/conversation/README.md) or ErrorEnvelope"
        )
    schemas.pop("EmptyPayload", None)
    return doc


def main() -> None:
    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parents[2] / "docs" / "asyncapi.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = build(ConversationService(Settings()))
    out.write_bytes(jsonutil.dumps(doc) + b"\n")


if __name__ == "__main__":
    main()
