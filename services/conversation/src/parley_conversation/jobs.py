"""What the sequencer queues (sequencer.py) and how each is answered: a message to send
(:class:`SendJob`, answered with its :class:`SendResult`) or another durable frame
(:class:`EventJob`, answered with its ``AppendResult``); the log entry each becomes
(:func:`pending_of`); a stored message answers its author's sends only
(:func:`resolve_by_author`); :func:`fail` answers with an error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.internal import Principal
from parley_contract.models import Message
from parley_conversation.entries import AppendResult, PendingEvent, message_as_stored


@dataclass
class SendResult:
    message: dict[str, Any]  # the stored message, wire JSON
    seq: int
    duplicate: bool = False


@dataclass(eq=False)
class SendJob:
    principal: Principal
    message: Message
    future: asyncio.Future[SendResult]
    stored: Message | None = None


@dataclass(eq=False)
class EventJob:
    event: Event
    build: Callable[[int], Any]
    future: asyncio.Future[AppendResult]
    key: str | None = None  # idempotency: stored as the entry's clientMessageId


Job = SendJob | EventJob


def pending_of(job: Job) -> PendingEvent:
    """The log entry a job becomes (a message's ``stored`` made with its seq)."""
    if isinstance(job, EventJob):
        return PendingEvent(job.event, job.build, job.key)

    def stored(seq: int, job: SendJob = job) -> Message:
        job.stored = message_as_stored(job.message, seq)
        return job.stored

    return PendingEvent(Event.MESSAGE_NEW, None, job.message.client_message_id, message=stored)


def resolve_by_author(jobs: list[SendJob], result: SendResult) -> None:
    """The stored message answers its author's sends (the send, its retries); another
    member's send that reused its ``clientMessageId`` gets CONFLICT, not an ack of a message
    that is not theirs (and theirs silently not stored)."""
    author = result.message.get("createdBy")
    for job in jobs:
        if job.future.done():
            continue
        if job.message.created_by == author:
            job.future.set_result(result)
        else:
            job.future.set_exception(
                ParleyError(
                    ErrorCode.CONFLICT,
                    "clientMessageId is already used by another sender in this conversation",
                )
            )


def fail(jobs: Sequence[Job], exc: ParleyError) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
