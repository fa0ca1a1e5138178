"""A store filled as the store experiments want it (search_embedded, unread_embedded):
C conversations of M user messages each, written straight to the store (no service); and
their ``main``: an embedded store of their own, C and M from the command line."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from parley_contract.models import Conversation, Message, Participant, ParticipantRole
from parley_conversation.domain import now_ms
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer


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


def run_on_embedded_store(measure: Callable[[str, int, int], Coroutine[Any, Any, None]]) -> None:
    """``measure(url, C, M)`` against a fresh embedded store; ``[C] [M]`` from the command
    line (default 50 conversations of 100 messages)."""
    conversations = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        server = StoreServer(Path(tmp)).start()
        try:
            asyncio.run(measure(server.url, conversations, messages))
        finally:
            server.stop()
