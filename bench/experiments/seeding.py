"""A store filled as the store experiments want it (search_embedded, unread_embedded):
C conversations of M user messages each, written straight to the store (no service)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from parley_contract.models import Conversation, Message, Participant, ParticipantRole
from parley_conversation.domain import now_ms
from parley_conversation.store import MongoStore


def _plain(_conversation: int, i: int) -> str:
    return f"message {i}"


async def seed_conversations(
    store: MongoStore,
    *,
    prefix: str,
    members: Sequence[str],
    author: str,
    conversations: int,
    messages: int,
    content: Callable[[int, int], str] = _plain,
) -> None:
    """Conversations ``{prefix}c0``, ``{prefix}c1``... with ``members`` in them, each holding
    ``messages`` text messages by ``author`` (seq 1..M); ``content(c, i)`` is the text of
    message ``i`` of conversation ``c``."""
    at = now_ms()
    for c in range(conversations):
        cid = f"{prefix}c{c}"
        await store.insert_conversation(
            Conversation(
                id=cid,
                conversation_id=cid,
                title=f"Room {c}",
                participants=[
                    Participant(user_id=u, role=ParticipantRole.USER, joined_at=at) for u in members
                ],
                created_at=at + timedelta(milliseconds=c),
                updated_at=at,
                created_by=author,
                last_seq=messages,
            )
        )
        batch = [
            Message.model_validate(
                {
                    "_id": f"msg-{uuid.uuid4().hex[:12]}",
                    "conversationId": cid,
                    "role": "user",
                    "content": content(c, i),
                    "seq": i + 1,
                    "createdAt": at + timedelta(milliseconds=i),
                    "createdBy": author,
                    "messageType": "text",
                    "messageStatus": "sent",
                    "isActive": True,
                }
            )
            for i in range(messages)
        ]
        await store.insert_messages(batch)
