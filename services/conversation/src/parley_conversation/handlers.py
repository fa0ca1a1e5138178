"""The use cases: one handler function per command route of the conversation service.

Each handler gets the service, the principal and its command's payload, already decoded and
validated (``parley_contract.routes``: the request is decoded once, straight from the bytes),
and returns the reply's ``data`` or raises ParleyError. Durable writes go through the
service's sequencer (group commit). A handler registers itself with ``@handles(event)``; the
service subscribes one handler per route (``routes_of(Service.CONVERSATION)``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from parley_contract import jsonutil, subjects
from parley_contract.commands import (
    ConversationCreate,
    ConversationDelete,
    ConversationJoin,
    ConversationRead,
    ConversationUpdate,
    MessageDelete,
    MessageEdit,
    MessageReact,
    MessageSend,
    MessageStop,
    TaskCreate,
)
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import AgentStop, Principal
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation, Message, Participant, Role
from parley_contract.timeutil import iso
from parley_conversation import domain, roles
from parley_conversation.agent_turns import check_agent
from parley_conversation.entries import MessageTotals
from parley_conversation.idempotency import command_key
from parley_conversation.jobs import SendResult

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

Handler = Callable[["ConversationService", Principal, Any], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

# The handler of each command route (filled by @handles; the service checks that every
# route of Service.CONVERSATION has one).
HANDLERS: dict[Event, Handler] = {}

UPDATE_RETRIES = 50  # optimistic conversation updates under contention


def handles(event: Event) -> Callable[[H], H]:
    def register(fn: H) -> H:
        assert event not in HANDLERS, f"two handlers for {event.value}"
        HANDLERS[event] = fn
        return fn

    return register


# ---------------------------------------------------------------- shared steps


async def conversation(
    svc: ConversationService, p: Principal, conversation_id: str, *, totals: bool = True
) -> Conversation:
    """The conversation, if ``p`` may see it; ``totals=False`` when only authorizing
    (one store read instead of two: the totals live in their own collection)."""
    conv = await svc.store.get_conversation(conversation_id, with_totals=totals)
    return domain.authorize(conv, p)


async def notify(
    svc: ConversationService, participants: list[Participant], frame: dict[str, Any]
) -> None:
    """The frame to every connection of each participant: by ``(kind, id)``, so the
    user ``x`` never gets what is addressed to the agent ``x``."""
    payload = jsonutil.dumps(frame)
    for kind, pid in dict.fromkeys(x.principal for x in participants):
        if pid:
            await svc.publish(subjects.principal_events(kind, pid), payload)


async def append_conversation_event(
    svc: ConversationService, event: Event, conv: Conversation
) -> tuple[Conversation, dict[str, Any]]:
    """A durable conversation:* event whose data is the conversation at that seq."""
    holder: dict[str, Conversation] = {}

    def build(seq: int) -> Any:
        holder["conv"] = conv.model_copy(update={"last_seq": seq})
        return model_json(holder["conv"])

    res = await svc.sequencer.append(conv.id, event, build, key=command_key.get())
    if res.duplicate:  # a retry racing its first run: the stored one
        return Conversation.model_validate(res.frame["data"]), res.frame
    return holder["conv"], res.frame


async def _stop_agent(svc: ConversationService, conversation_id: str, p: Principal) -> None:
    stop = AgentStop(conversation_id=conversation_id, principal=p)
    await svc.publish(
        subjects.AGENT_STOP, jsonutil.dumps(stop.model_dump(by_alias=True, mode="json"))
    )


async def _backoff() -> None:
    """A short random pause after losing an optimistic update, so contenders spread out."""
    await asyncio.sleep(random.uniform(0, 0.01))


# ---------------------------------------------------------------- conversations


@handles(Event.CONVERSATION_CREATE)
async def conversation_create(
    svc: ConversationService, p: Principal, cmd: ConversationCreate
) -> Any:
    conv = domain.new_conversation(p, cmd)
    await svc.cursors.remember(p.kind, p.id, p.name)
    if cmd.agent_id:
        await check_agent(svc, cmd.agent_id)
    try:
        await svc.store.insert_conversation(conv)
    except ParleyError as exc:
        # A retry (same idempotency key) of a create whose first run stored the
        # conversation but died before its event: finish it.
        if exc.code is not ErrorCode.CONFLICT or command_key.get() is None:
            raise
        existing = await svc.store.get_conversation(conv.id, with_totals=False)
        if existing is None or existing.created_by != p.id:
            raise
        conv = existing
    conv, frame = await append_conversation_event(svc, Event.CONVERSATION_CREATED, conv)
    await notify(svc, conv.participants, frame)
    return model_json(conv)


@handles(Event.CONVERSATION_JOIN)
async def conversation_join(svc: ConversationService, p: Principal, cmd: ConversationJoin) -> Any:
    await svc.sequencer.settle_totals()
    # lastSeq before authorizing: a removal the authorization did not see yet has a seq
    # above it, so the gateway replays or delivers it and evicts this joiner.
    last = await svc.store.last_seq(cmd.conversation_id)
    auth = svc.sequencer.auth
    base = auth.base(cmd.conversation_id) if auth is not None else None
    conv = await conversation(svc, p, cmd.conversation_id)
    if auth is not None:  # the owner's first send after a join needs no read (authcache.py)
        auth.seed(conv.id, conv, base)
    epoch = await svc.store.epoch_of(cmd.conversation_id)
    conv = conv.model_copy(update={"last_seq": max(last, conv.last_seq)})
    wire = model_json(conv)
    await svc.cursors.remember(p.kind, p.id, p.name)
    await svc.receipts.add_names([wire])
    receipts = await svc.receipts.join_info(p, conv.id)
    return {"conversation": wire, "lastSeq": last, "epoch": epoch, **receipts}


@handles(Event.CONVERSATION_READ)
async def conversation_read(svc: ConversationService, p: Principal, cmd: ConversationRead) -> Any:
    conv = await conversation(svc, p, cmd.conversation_id, totals=False)
    return await svc.receipts.read(p, conv, cmd.seq)


@handles(Event.CONVERSATION_UPDATE)
async def conversation_update(
    svc: ConversationService, p: Principal, cmd: ConversationUpdate
) -> Any:
    for _ in range(UPDATE_RETRIES):
        conv = await conversation(svc, p, cmd.conversation_id)
        change = domain.apply_update(conv, p, cmd)
        role = roles.role_of(conv, p)
        for action in sorted(roles.update_actions(conv, change.conversation, p)):
            roles.require(role, action)
        if not change.changed:
            if _first_run_finished(conv, p):
                await _add_call_cost(svc, conv.id, cmd)
                return model_json(conv)
            change.conversation = conv  # as stored; its event may be missing (below)
            break
        if change.agent_switched and change.conversation.agent_id:
            await check_agent(svc, change.conversation.agent_id)
        if await svc.store.update_conversation(conv, change.conversation):
            break
        await _backoff()
    else:
        raise ParleyError(ErrorCode.CONFLICT, "the conversation is changing too fast, retry")
    new, frame = await append_conversation_event(
        svc, Event.CONVERSATION_UPDATED, domain.with_call_cost(change.conversation, cmd)
    )
    await _add_call_cost(svc, conv.id, cmd)
    if change.added:
        await notify(svc, change.added, frame)
    if change.agent_switched:
        system = domain.agent_switch_message(conv.id, change.previous_agent_id, new.agent_id, p.id)
        service = Principal(id=p.id, kind=PrincipalKind.SERVICE, name=p.name)
        res = await svc.sequencer.send(service, system)
        new = new.model_copy(update={"last_seq": max(new.last_seq, res.seq)})
    return model_json(new)


def _first_run_finished(conv: Conversation, p: Principal) -> bool:
    """For an update that changes nothing: whether to answer without storing an event.

    Not for a keyed command by the last one who changed the conversation: it may be the
    retry of a first run that wrote the document and was killed before its event; without
    the event the gateways would not evict a removed member, nor would the partition's owner
    learn the change (authcache.py). Storing it again is harmless (the same conversation)."""
    return command_key.get() is None or conv.updated_by != p.id


async def _add_call_cost(
    svc: ConversationService, conversation_id: str, cmd: ConversationUpdate
) -> None:
    """An agent's model call behind an update (title, context) counts in the totals."""
    tokens, cost = domain.call_cost(cmd)
    if tokens or cost:
        await svc.store.add_totals({conversation_id: MessageTotals(tokens=tokens, cost=cost)})


@handles(Event.CONVERSATION_DELETE)
async def conversation_delete(
    svc: ConversationService, p: Principal, cmd: ConversationDelete
) -> Any:
    """Soft delete (creator only): isActive false + deletedAt, a durable
    conversation:deleted to the conversation and to each participant, the running agent
    turn stopped. Afterwards reads, joins and writes answer NOT_FOUND and lists skip it."""
    for _ in range(UPDATE_RETRIES):
        conv = await conversation(svc, p, cmd.conversation_id)
        if conv.deleted_at is not None:  # a service deleting twice
            raise domain.deleted_error(conv.id)
        roles.require(roles.role_of(conv, p), roles.Action.DELETE)  # the role matrix
        new = domain.delete_conversation(conv, p)
        if await svc.store.update_conversation(conv, new):
            break
        await _backoff()
    else:
        raise ParleyError(ErrorCode.CONFLICT, "the conversation is changing too fast, retry")
    new, frame = await append_conversation_event(svc, Event.CONVERSATION_DELETED, new)
    await svc.attachments.conversation_deleted(new.id)
    await notify(svc, [x for x in new.participants if x.active], frame)
    await _stop_agent(svc, new.id, p)
    return model_json(new)


# ---------------------------------------------------------------- messages


@handles(Event.MESSAGE_SEND)
async def message_send(svc: ConversationService, p: Principal, cmd: MessageSend) -> Any:
    msg = await message_to_send(svc, p, cmd)
    res = await svc.sequencer.send(p, msg)
    return await message_sent(svc, cmd, res)


async def message_to_send(svc: ConversationService, p: Principal, cmd: MessageSend) -> Message:
    """The message a send stores (before the sequencer): its agent, its attachments."""
    msg = domain.new_message(p, cmd)
    if msg.role in (Role.ASSISTANT, Role.TOOL) and msg.agent_id is None:
        conv = await conversation(svc, p, cmd.conversation_id, totals=False)
        if conv.agent_id:
            msg = msg.model_copy(update={"agent_id": conv.agent_id})
    if cmd.attachments:
        await conversation(svc, p, cmd.conversation_id, totals=False)
        files = await svc.attachments.resolve(p, cmd.conversation_id, cmd.attachments)
        msg = msg.model_copy(update={"attachments": files})
    return msg


async def message_sent(svc: ConversationService, cmd: MessageSend, res: SendResult) -> Any:
    """A send's reply data, once stored."""
    if cmd.attachments:  # bound to the message as stored (a retry's: the first run's)
        await svc.attachments.bind(res.message.get("attachments") or [], res.message["_id"])
    return svc.attachments.sign(res.message)


async def _message_for_change(
    svc: ConversationService, p: Principal, cid: str, mid: str
) -> tuple[roles.ConversationRole | None, Message]:
    conv = await conversation(svc, p, cid, totals=False)
    msg = await svc.store.get_message(cid, mid)
    if msg is None:
        raise ParleyError(ErrorCode.NOT_FOUND, "no such message in this conversation")
    return roles.role_of(conv, p), msg


async def _publish_message_event(svc: ConversationService, event: Event, msg: Message) -> Any:
    data = model_json(msg)
    res = await svc.sequencer.append(
        msg.conversation_id, event, lambda _seq: data, key=command_key.get()
    )
    return svc.attachments.sign(res.frame["data"] if res.duplicate else data)


@handles(Event.MESSAGE_EDIT)
async def message_edit(svc: ConversationService, p: Principal, cmd: MessageEdit) -> Any:
    role, msg = await _message_for_change(svc, p, cmd.conversation_id, cmd.message_id)
    roles.require(role, roles.message_action(msg, p, delete=False))
    new = domain.edited(msg, p, cmd.content, moderator=True)
    stored = await svc.store.update_message(
        msg.conversation_id,
        msg.id,
        {
            "content": new.content,
            "editedAt": new.edited_at,
            "updatedAt": new.updated_at,
            "updatedBy": new.updated_by,
        },
    )
    if stored is None:
        raise ParleyError(ErrorCode.CONFLICT, "the message was deleted")
    return await _publish_message_event(svc, Event.MESSAGE_UPDATED, stored)


@handles(Event.MESSAGE_DELETE)
async def message_delete(svc: ConversationService, p: Principal, cmd: MessageDelete) -> Any:
    role, msg = await _message_for_change(svc, p, cmd.conversation_id, cmd.message_id)
    roles.require(role, roles.message_action(msg, p, delete=True))
    new = domain.deleted(msg, p, moderator=True)
    stored = await svc.store.update_message(
        msg.conversation_id,
        msg.id,
        {
            "content": "",
            "deletedAt": new.deleted_at,
            "isActive": False,
            "updatedAt": new.updated_at,
            "updatedBy": new.updated_by,
        },
    )
    if stored is None:
        raise ParleyError(ErrorCode.CONFLICT, "the message was already deleted")
    await svc.attachments.message_deleted(msg.id, msg.attachments or [])
    return await _publish_message_event(svc, Event.MESSAGE_DELETED, stored)


@handles(Event.MESSAGE_REACT)
async def message_react(svc: ConversationService, p: Principal, cmd: MessageReact) -> Any:
    emoji = domain.check_emoji(cmd.emoji)
    role, _msg = await _message_for_change(svc, p, cmd.conversation_id, cmd.message_id)
    roles.require(role, roles.Action.REACT)
    stored = await svc.store.react(cmd.conversation_id, cmd.message_id, emoji, p.id, cmd.remove)
    if stored is None:
        raise ParleyError(ErrorCode.CONFLICT, "the message was deleted")
    return await _publish_message_event(svc, Event.MESSAGE_REACTED, stored)


@handles(Event.MESSAGE_STOP)
async def message_stop(svc: ConversationService, p: Principal, cmd: MessageStop) -> Any:
    conv = await conversation(svc, p, cmd.conversation_id, totals=False)
    roles.require(roles.role_of(conv, p), roles.Action.STOP)
    await _stop_agent(svc, cmd.conversation_id, p)
    return {"stopping": True}


# ---------------------------------------------------------------- tasks


@handles(Event.TASK_CREATE)
async def task_create(svc: ConversationService, p: Principal, cmd: TaskCreate) -> Any:
    conv = await conversation(svc, p, cmd.conversation_id, totals=False)
    roles.require(roles.role_of(conv, p), roles.Action.CREATE_TASK)
    task = domain.new_task(p, cmd, conv)
    await svc.store.insert_task(task)
    wire = {k: iso(v) if isinstance(v, datetime) else v for k, v in task.items()}
    res = await svc.sequencer.append(
        conv.id, Event.TASK_CREATED, lambda _seq: wire, key=command_key.get()
    )
    return res.frame["data"] if res.duplicate else wire
