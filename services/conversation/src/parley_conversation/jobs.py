"""What the sequencer queues (sequencer.py) and how each is answered: a message to send
(:class:`SendJob`, answered with its :class:`SendResult`) or another durable frame
(:class:`EventJob`, answered with its ``AppendResult``); the log entry each becomes
(:func:`pending_of`); which of a batch's jobs go to the store (:func:`admit`); a stored
message answers its author's sends only (:func:`resolve_by_author`); :func:`fail` answers
with an error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.internal import Principal
from parley_contract.models import Conversation, ConversationStatus, Message
from parley_conversation import domain, roles
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


def admit(
    groups: dict[str, list[Job]], convs: dict[str, Conversation]
) -> tuple[dict[str, list[Job]], dict[tuple[str, str], list[SendJob]]]:
    """Per conversation, a batch's jobs that go to the store (conversations with none left
    out): every durable frame, and the sends its conversation admits (the others fail
    here). A retry of a send inside the batch (its ``clientMessageId``) is not stored: it
    waits for the first, in the followers by key."""
    live: dict[str, list[Job]] = {}
    followers: dict[tuple[str, str], list[SendJob]] = {}
    for cid, group in groups.items():
        conv = convs.get(cid)
        kept: list[Job] = []
        for job in group:
            if isinstance(job, EventJob):
                kept.append(job)
                continue
            role = roles.role_of(conv, job.principal) if conv is not None else None
            if conv is None or not roles.may(role, roles.Action.POST):
                # The role matrix (parley_conversation.roles): observers read only.
                fail([job], roles.denial(role, roles.Action.POST))
                continue
            if conv.deleted_at is not None:
                fail([job], domain.deleted_error(cid))
                continue
            if conv.status is ConversationStatus.CLOSED:
                fail([job], ParleyError(ErrorCode.CONFLICT, "the conversation is closed"))
                continue
            cmid = job.message.client_message_id
            if cmid is not None:
                if (cid, cmid) in followers:  # a retry inside the batch waits for the first
                    followers[(cid, cmid)].append(job)
                    continue
                followers[(cid, cmid)] = []
            kept.append(job)
        live[cid] = kept
    return {cid: js for cid, js in live.items() if js}, followers


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
