"""``ParleyClient``: the connection plus every command as a typed method, and the HTTP reads.

Each method returns the contract's model of the reply (``Message``, ``Conversation``...) or
raises ``ParleyError`` with the server's code. ``send_message`` is idempotent: it always
carries a ``clientMessageId`` (made here unless given) and, when the outcome is unknown
(TIMEOUT, or the connection dropped before the reply), sends the same message again, which
the server stores at most once (docs/protocol.md 4.4).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from parley_client.connection import Connection
from parley_client.frames import error_of, parse
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.models import Conversation, Message
from parley_contract.routes import COMMAND_REPLIES
from parley_contract.server_events import ConversationJoinedData, ReadReply, StopReply, Task


def new_client_message_id() -> str:
    return f"cm-{uuid.uuid4().hex}"


def _outcome_unknown(exc: ParleyError) -> bool:
    if exc.code is ErrorCode.TIMEOUT:
        return True
    return exc.code is ErrorCode.SERVICE_UNAVAILABLE and bool(
        (exc.details or {}).get("outcomeUnknown")
    )


class ParleyClient(Connection):
    """A Parley client (see :mod:`parley_client.connection` for what it guarantees)."""

    send_attempts = 4  # a message whose outcome stays unknown is sent at most this often
    send_timeout = 30.0

    async def __aenter__(self) -> ParleyClient:
        await self.connect()
        return self

    # ---------------------------------------------------------------- conversations

    async def create_conversation(self, **fields: Any) -> Conversation:
        """``conversation:create`` with camelCase or snake_case fields (``agentId``...)."""
        data = await self.request(Event.CONVERSATION_CREATE, _camel(fields))
        return parse(Conversation, data)

    async def join(
        self, conversation_id: str, since_seq: int | None = None
    ) -> ConversationJoinedData:
        """Watch a conversation. With ``since_seq`` (or a seq already received here) every
        durable event after it comes first, in order; without, live events only."""
        since = max(since_seq or 0, self.last_seq(conversation_id))
        data: dict[str, Any] = {"conversationId": conversation_id}
        if since_seq is not None or conversation_id in self._order.last_seqs:
            data["sinceSeq"] = since
            self._order.last_seqs[conversation_id] = since
        self._joined[conversation_id] = None
        try:
            reply = parse(
                ConversationJoinedData,
                await self.request(Event.CONVERSATION_JOIN, data, retry=True),
            )
        except ParleyError:
            self._joined.pop(conversation_id, None)
            raise
        self._order.last_seqs.setdefault(conversation_id, reply.last_seq)
        return reply

    async def leave(self, conversation_id: str) -> None:
        self._joined.pop(conversation_id, None)
        await self.request(Event.CONVERSATION_LEAVE, {"conversationId": conversation_id})

    async def update_conversation(self, conversation_id: str, **changes: Any) -> Conversation:
        data = {"conversationId": conversation_id, **_camel(changes)}
        return parse(Conversation, await self.request(Event.CONVERSATION_UPDATE, data))

    async def delete_conversation(self, conversation_id: str) -> Conversation:
        data = {"conversationId": conversation_id}
        return parse(Conversation, await self.request(Event.CONVERSATION_DELETE, data))

    async def mark_read(self, conversation_id: str, seq: int) -> ReadReply:
        """``conversation:read``: read up to ``seq``; the cursor and the unread count."""
        data = {"conversationId": conversation_id, "seq": seq}
        return parse(ReadReply, await self.request(Event.CONVERSATION_READ, data))

    async def command(self, event: Event, **fields: Any) -> Any:
        """Any command by name, the reply parsed with the contract's reply model when it has
        one (the route's ``reply``: ``routes.COMMAND_REPLIES``), else the raw ``data``."""
        reply = await self.request(event, _camel(fields))
        model = COMMAND_REPLIES.get(event)
        return parse(model, reply) if model is not None else reply

    # ---------------------------------------------------------------- messages

    async def send_message(
        self,
        conversation_id: str,
        content: str = "",
        *,
        client_message_id: str | None = None,
        **fields: Any,
    ) -> Message:
        """Post a message (other Message fields as keywords: ``parent_message_id``,
        ``message_type``, ``tool_calls``...). Safe to retry: see the module docstring."""
        data = {
            "conversationId": conversation_id,
            "content": content,
            "clientMessageId": client_message_id or new_client_message_id(),
            **_camel(fields),
        }
        for attempt in range(1, self.send_attempts + 1):
            try:
                reply = await self.request(
                    Event.MESSAGE_SEND, data, retry=True, timeout=self.send_timeout
                )
                return parse(Message, reply)
            except ParleyError as exc:
                if attempt == self.send_attempts or not _outcome_unknown(exc):
                    raise
                await asyncio.sleep(self.backoff(attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def edit_message(self, conversation_id: str, message_id: str, content: str) -> Message:
        data = {"conversationId": conversation_id, "messageId": message_id, "content": content}
        return parse(Message, await self.request(Event.MESSAGE_EDIT, data))

    async def delete_message(self, conversation_id: str, message_id: str) -> Message:
        data = {"conversationId": conversation_id, "messageId": message_id}
        return parse(Message, await self.request(Event.MESSAGE_DELETE, data))

    async def react(
        self, conversation_id: str, message_id: str, emoji: str, *, remove: bool = False
    ) -> Message:
        data: dict[str, Any] = {
            "conversationId": conversation_id,
            "messageId": message_id,
            "emoji": emoji,
        }
        if remove:
            data["remove"] = True
        return parse(Message, await self.request(Event.MESSAGE_REACT, data))

    async def stop(self, conversation_id: str) -> StopReply:
        data = {"conversationId": conversation_id}
        return parse(StopReply, await self.request(Event.MESSAGE_STOP, data))

    async def call_tool(
        self,
        tool_name: str,
        arguments: dict[str, Any] | None = None,
        *,
        conversation_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """``tool:call`` (agents): the platform runs the tool; ``{result, success, error}``."""
        data: dict[str, Any] = {"toolName": tool_name, "arguments": arguments or {}}
        if conversation_id is not None:
            data["conversationId"] = conversation_id
        reply = await self.request(Event.TOOL_CALL, data, timeout=timeout)
        return dict(reply) if isinstance(reply, dict) else {"result": reply}

    async def create_task(self, conversation_id: str, title: str, **fields: Any) -> Task:
        data = {"conversationId": conversation_id, "title": title, **_camel(fields)}
        return parse(Task, await self.request(Event.TASK_CREATE, data))

    async def typing(self, conversation_id: str, *, started: bool = True) -> None:
        event = Event.TYPING_START if started else Event.TYPING_STOP
        await self.notify(event, {"conversationId": conversation_id})

    # ---------------------------------------------------------------- HTTP (docs/protocol.md 7)

    @property
    def http_base(self) -> str:
        """The current gateway's HTTP address (``http://host:port``)."""
        base = self.current_url.replace("ws://", "http://").replace("wss://", "https://")
        return base.removesuffix("/ws")

    async def http_get(self, path: str, **params: Any) -> Any:
        """``GET`` on the current gateway with the bearer token; the envelope's ``data``."""
        query = {k: v for k, v in params.items() if v is not None}
        async with httpx.AsyncClient(base_url=self.http_base, timeout=self.request_timeout) as http:
            resp = await http.get(
                path, params=query, headers={"Authorization": f"Bearer {self.token}"}
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("success"):
            error = body.get("error") if isinstance(body, dict) else None
            raise error_of(
                error or {"code": "INTERNAL_ERROR", "message": f"HTTP {resp.status_code}"}
            )
        return body.get("data")

    async def list_conversations(
        self, limit: int = 50, status: str | None = None
    ) -> list[Conversation]:
        data = await self.http_get("/v1/conversations", limit=limit, status=status)
        return [parse(Conversation, c) for c in (data or {}).get("items", [])]

    async def get_conversation(self, conversation_id: str) -> Conversation:
        return parse(Conversation, await self.http_get(f"/v1/conversations/{conversation_id}"))

    async def messages(
        self,
        conversation_id: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[Message], bool]:
        """A page of history in ascending seq order, and whether more exist."""
        data = await self.http_get(
            f"/v1/conversations/{conversation_id}/messages",
            afterSeq=after_seq,
            beforeSeq=before_seq,
            limit=limit,
        )
        items = [parse(Message, m) for m in (data or {}).get("items", [])]
        return sorted(items, key=lambda m: m.seq or 0), bool((data or {}).get("hasMore"))


def _camel(fields: dict[str, Any]) -> dict[str, Any]:
    """snake_case keywords as the wire's camelCase (camelCase passes through)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        head, *rest = key.split("_")
        out[head + "".join(w[:1].upper() + w[1:] for w in rest)] = value
    return out
