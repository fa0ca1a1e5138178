"""Exactly-once writing commands across retries (issue 11).

A gateway that got no answer sends the command again, to another replica, with the same
``idempotencyKey`` (``CommandRequest``). How each writing command stays exactly once:

- ``message:send``: the key is the message's ``clientMessageId`` (the client's, or the
  gateway's when it gave none); the message's id is derived from it (``entry_id``), so the
  conversation log's ``_id`` stores it once and a repeat is answered with the stored message.
- the other writing commands (``logged``: ``writes`` in the route table): the log entry of
  the durable event each stores carries ``log_key(principal, key)`` as its
  ``clientMessageId`` and an ``_id`` derived from it the same way. A repeat first looks the
  entry up (by that ``_id``) and answers with its data (each of these commands replies with
  the data of the event it stores); a repeat racing its original stores nothing twice (the
  ``_id``) and answers with the stored entry. Their other writes (the message or
  conversation document) set values, so doing them again changes nothing; a repeat that
  fails because the first did them (``message:delete`` of a deleted message) finds the
  entry and answers with it.
- ``conversation:create`` without a ``conversationId``: the id is derived from the key, so a
  repeat cannot create a second conversation.
- ``message:stop`` stores nothing (a second stop is harmless); ``conversation:update`` without
  a change stores nothing, unless it is keyed and by the principal who changed the
  conversation last (a first run killed between the document and its event: handlers.py).
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from typing import Final, Literal

from parley_contract.commands import CommandData, ConversationCreate, MessageSend
from parley_contract.events import Event
from parley_contract.routes import Route

# The log key of the command being handled (set around the handler; read where it stores its
# durable event).
command_key: ContextVar[str | None] = ContextVar("command_key", default=None)


def logged(route: Route) -> bool:
    """Whether a command stores its durable event under the log key: every writing route
    (``route.writes``) but message:send, whose key is the message's clientMessageId."""
    return route.writes and route.event is not Event.MESSAGE_SEND


# The log's ``_id`` of a keyed entry. Until 2026-11-30 a partial unique index on
# ``(conversationId, clientMessageId)`` kept keys unique; on the embedded store every index
# costs about as much per insert (and per later update: a delivery receipt rewrites every
# index entry of the message) as the document itself, and the ``_id`` index is there anyway
# (docs/benchmarks.md, "Issue 16: 1,000 durable msg/s"). Messages and other events have
# their own prefix: a client's clientMessageId can never answer another command's key.
ENTRY_PREFIXES: Final = {"message": "msg", "event": "evt"}


def entry_id(kind: Literal["message", "event"], conversation_id: str, key: str) -> str:
    """The ``_id`` of the log entry keyed ``key`` in a conversation: ``msg-`` (a message's
    id, the shape of ``new_id("msg")``) or ``evt-`` and 20 hex digits of a SHA-256."""
    digest = hashlib.sha256(f"{conversation_id}\0{key}".encode()).hexdigest()[:20]
    return f"{ENTRY_PREFIXES[kind]}-{digest}"


def log_key(principal_id: str, key: str) -> str:
    """The ``clientMessageId`` of the durable event a keyed command stores (``~`` first: a
    client's own ids for messages are told apart, and the principal keeps keys apart)."""
    return f"~{principal_id}:{key}"


def derived_conversation_id(principal_id: str, key: str) -> str:
    """The id of a conversation created without one, from the command's key."""
    digest = hashlib.sha256(f"{principal_id}\0{key}".encode()).hexdigest()[:20]
    return f"conv-{digest}"


def with_key(cmd: CommandData, principal_id: str, key: str) -> CommandData:
    """The command with what the key decides: a message's clientMessageId, a new
    conversation's id (when the client gave none)."""
    if isinstance(cmd, MessageSend) and cmd.client_message_id is None:
        return cmd.model_copy(update={"client_message_id": key})
    if isinstance(cmd, ConversationCreate) and cmd.conversation_id is None:
        return cmd.model_copy(
            update={"conversation_id": derived_conversation_id(principal_id, key)}
        )
    return cmd
