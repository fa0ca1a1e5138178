"""Batched ``message:send`` (issue 16: durable writes at 1,000/s with a short ack).

A gateway runs the commands of one connection to one conversation one after the other
(docs/protocol.md, "Pipelining"); the sends queued behind a send in flight come here as one
:class:`~parley_contract.internal.SendBatchRequest` on the partition's batch subject
(``routes.send_batch_subject``), instead of one round trip each. Each item is answered with
the envelope its own ``message:send`` request would have had:

- decoded once (the batch), each item's data validated once, on its own: a bad message
  gets its error and the others go on;
- the sender's kind checked once for the batch (the same principal sent them all);
- each item keeps its own idempotency key (its clientMessageId, or the gateway's): a batch
  sent again (the gateway's failover to another replica) stores each message once, and the
  ones already stored are answered as stored;
- the messages are queued in the sequencer in their order in one loop step, so they share a
  group commit (authorized together: one read, or the owner's cache) and take their seqs in
  that order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from parley_contract import envelopes
from parley_contract.commands import MessageSend, validation_error
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import SendBatchRequest
from parley_contract.models import Message
from parley_contract.routes import SEND_BATCH_ROUTE
from parley_conversation.handlers import message_sent, message_to_send
from parley_conversation.idempotency import with_key
from parley_conversation.jobs import SendResult

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService
    from parley_conversation.work import Work

logger = logging.getLogger(__name__)

OP = f"{SEND_BATCH_ROUTE.event.value}.batch"  # the metrics' operation label


def send_batch_work(svc: ConversationService) -> Work:
    route = SEND_BATCH_ROUTE

    async def work(body: bytes) -> Any:
        try:
            req = SendBatchRequest.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        p = req.principal
        if p.kind is not PrincipalKind.SERVICE and not route.may_send(p.kind):
            raise ParleyError(
                ErrorCode.FORBIDDEN, f"a {p.kind.value} may not send {route.event.value}"
            )
        results: list[dict[str, Any] | None] = [None] * len(req.items)
        ready: list[tuple[int, MessageSend, Message]] = []
        for i, item in enumerate(req.items):
            try:
                try:
                    cmd = MessageSend.model_validate(item.data)
                except ValidationError as exc:
                    raise validation_error(exc) from None
                if cmd.conversation_id != req.conversation_id:
                    raise ParleyError(
                        ErrorCode.VALIDATION_ERROR,
                        "conversationId: not the batch's conversation",
                        {"field": "conversationId"},
                    )
                keyed = with_key(cmd, p.id, item.idempotency_key)
                assert isinstance(keyed, MessageSend)
                ready.append((i, keyed, await message_to_send(svc, p, keyed)))
            except Exception as exc:  # each item answered alone (as serve does)
                results[i] = _failed(exc)
        # All queued in this loop step, in order: one group commit, seqs in this order.
        queued: list[tuple[int, MessageSend, asyncio.Future[SendResult]]] = []
        for i, cmd, msg in ready:
            try:
                queued.append((i, cmd, svc.sequencer.queue_send(p, msg)))
            except ParleyError as exc:  # overloaded (load shedding) or shutting down
                results[i] = envelopes.fail_from(exc)
        for i, cmd, fut in queued:
            try:
                results[i] = envelopes.ok(await message_sent(svc, cmd, await fut))
            except asyncio.CancelledError:
                for _, _, rest in queued:
                    rest.cancel()
                raise
            except Exception as exc:  # each item answered alone (as serve does)
                results[i] = _failed(exc)
        return {"results": results}

    return work


def _failed(exc: Exception) -> dict[str, Any]:
    """The envelope ``ConversationService.serve`` would have answered a single send with."""
    if isinstance(exc, ParleyError):
        return envelopes.fail_from(exc)
    if isinstance(exc, PyMongoError):
        logger.error("store error on %s: %r", OP, exc)
        return envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable, retry")
    logger.error("unexpected error on %s", OP, exc_info=exc)
    return envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error")
