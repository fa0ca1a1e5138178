"""What one request does, per command route and per query (``ConversationService.serve`` runs
it and makes the reply envelope): the command's body decoded and validated in one pass, the
sender's kind checked against the route, then its handler; a command with an idempotency key
is applied once (:mod:`parley_conversation.idempotency`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.routes import Route
from parley_conversation import queries
from parley_conversation.handlers import HANDLERS, Handler
from parley_conversation.idempotency import command_key, log_key, logged, with_key

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

# One request's work: the reply's data (or ParleyError).
Work = Callable[[bytes], Awaitable[Any]]


def command_work(svc: ConversationService, route: Route) -> Work:
    handler = HANDLERS[route.event]
    keyed = logged(route)

    async def work(body: bytes) -> Any:
        req = route.decode(body)  # principal and payload, validated in one pass
        p, cmd = req.principal, req.data
        if p.kind is not PrincipalKind.SERVICE and not route.may_send(p.kind):
            raise ParleyError(
                ErrorCode.FORBIDDEN, f"a {p.kind.value} may not send {route.event.value}"
            )
        key = req.idempotency_key
        if key is None:
            return await handler(svc, p, cmd)
        cmd = with_key(cmd, p.id, key)
        if not keyed:
            return await handler(svc, p, cmd)
        return await _keyed(svc, handler, p, cmd, log_key(p.id, key))

    return work


def query_work(svc: ConversationService, q: queries.Query) -> Work:
    async def work(body: bytes) -> Any:
        return await q.run(svc, body)

    return work


async def _keyed(
    svc: ConversationService, handler: Handler, p: Principal, cmd: Any, key: str
) -> Any:
    """A command with an idempotency key, applied once (see parley_conversation.idempotency):
    a repeat is answered with the data of the durable event its first run stored."""
    cid: str = cmd.conversation_id
    earlier = await svc.store.frames_by_client_ids({cid: [key]})
    if earlier:
        return next(iter(earlier.values()))["data"]
    token = command_key.set(key)
    try:
        return await handler(svc, p, cmd)
    except ParleyError:
        # The first run did it (a delete of a deleted message now fails): its answer.
        earlier = await svc.store.frames_by_client_ids({cid: [key]})
        if earlier:
            return next(iter(earlier.values()))["data"]
        raise
    finally:
        command_key.reset(token)
