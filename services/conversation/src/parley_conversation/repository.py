"""What the service needs from a store: :class:`Repository` (one conformance suite:
tests/test_store.py); :class:`parley_conversation.store.MongoStore` is the one there is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley_contract.internal import Principal
from parley_contract.models import Conversation, ConversationStatus, Message
from parley_conversation.entries import AppendResult, MessageTotals, PendingEvent


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class Repository(Protocol):
    """What the service needs from a store (one conformance suite: tests/test_store.py)."""

    async def insert_conversation(self, conv: Conversation) -> None: ...
    async def get_conversation(
        self, conversation_id: str, *, with_totals: bool = True
    ) -> Conversation | None: ...
    async def update_conversation(self, old: Conversation, new: Conversation) -> bool: ...
    async def list_conversations(
        self,
        principal: Principal,
        status: ConversationStatus | None,
        cursor: str | None,
        limit: int,
    ) -> Page: ...
    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]: ...
    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]], *, strict: Set[str] = ...
    ) -> dict[str, list[AppendResult]]: ...
    async def frames_by_client_ids(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[tuple[str, str], dict[str, Any]]: ...
    async def events_since(
        self, conversation_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def last_seq(self, conversation_id: str) -> int: ...
    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None: ...
    async def get_message(self, conversation_id: str, message_id: str) -> Message | None: ...
    async def update_message(
        self, conversation_id: str, message_id: str, changes: dict[str, Any]
    ) -> Message | None: ...
    async def react(
        self, conversation_id: str, message_id: str, emoji: str, principal_id: str, remove: bool
    ) -> Message | None: ...
    async def list_messages(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]: ...
    async def insert_task(self, task: dict[str, Any]) -> None: ...
    async def ping(self) -> bool: ...
