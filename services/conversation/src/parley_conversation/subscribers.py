"""The replica's FastStream subscribers (wired by service.py): one per command route of the
route table (``routes_of(Service.CONVERSATION)``, queue group ``conversation``) and per
query, each handing its raw request to ``ConversationService.serve``; and the delivery
reports, which every replica gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faststream.message import StreamMessage

from parley_contract import subjects
from parley_contract.routes import REJOIN_SUBJECT, Service, routes_of
from parley_conversation import queries
from parley_conversation.handlers import HANDLERS
from parley_conversation.work import Work, command_work, query_work

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

ROUTES = routes_of(Service.CONVERSATION)
assert {r.event for r in ROUTES} == set(HANDLERS), "one handler per conversation route"


def register(
    svc: ConversationService, delivery_report: Callable[[bytes], Awaitable[None]]
) -> list[Any]:
    """The replica's subscribers, registered on its broker (started with it)."""
    subscribers: list[Any] = []
    # One subscription per route (not parley.cmd.>: other services answer other
    # commands there, e.g. the agent bridge answers tool:call) and per query.
    for route in ROUTES:
        subscribers.append(
            _subscribe(
                svc,
                route.subject,
                route.event.value,
                f"Command {route.event.value}",
                command_work(svc, route),
            )
        )
    for q in queries.QUERIES:  # but the batched rejoin: its own subscription (rejoin.py)
        if q.subject != REJOIN_SUBJECT:
            subscribers.append(_subscribe(svc, q.subject, q.op, q.title, query_work(svc, q)))
    # Delivery reports from the gateways: published, no reply; every replica gets each
    # one and applies the conversations it owns (receipts.py, docs/affinity.md).
    sub = svc.broker.subscriber(
        subjects.INTERNAL_DELIVERY,
        max_workers=svc.settings.max_concurrency,
        title=f"Delivery reports ({subjects.INTERNAL_DELIVERY})",
        decoder=_raw_body,
    )
    sub(delivery_report)
    subscribers.append(sub)
    return subscribers


def _subscribe(svc: ConversationService, subject: str, op: str, title: str, work: Work) -> Any:
    sub = svc.broker.subscriber(
        subject,
        queue=subjects.QUEUE_CONVERSATION,
        max_workers=svc.settings.max_concurrency,
        title=f"{title} ({subject})",
        decoder=_raw_body,
    )

    # The body arrives raw (see _raw_body): the handler needs no FastStream context
    # injection, which resolves in a worker thread per message.
    async def handler(body: bytes) -> bytes:
        return await svc.serve(op, body, work)

    handler.__name__ = f"handle_{op.replace('.', '_').replace(':', '_')}"
    sub(handler)
    return sub


async def _raw_body(msg: StreamMessage[Any]) -> bytes:
    """The request body untouched: parsed once, by the handler, into an envelope on error."""
    body: bytes = msg.body
    return body
