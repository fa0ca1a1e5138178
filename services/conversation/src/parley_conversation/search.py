"""Search over a principal's own conversations: titles and message text (issue 17).

``GET /v1/search?q=&cursor=&limit=`` on every gateway asks this through
``subjects.QUERY_SEARCH``. The scope is the conversations the caller is an active
participant of (an agent: also those it is the agent of), not deleted, the
``MAX_SCOPE`` most recently created; a message elsewhere is never found.

Two ways to match, chosen at startup by what the store can do (``MongoStore.search_mode``):

- ``text`` (MongoDB): text indexes on ``messages.content`` and ``conversations.title``
  (language ``none``: no stemming, no stop words); ``q`` is searched as one phrase
  (``$text: {$search: "\\"q\\""}``), case- and diacritic-insensitive.
- ``regex`` (the embedded SecantusDB, which has no text indexes): ``q`` as a literal,
  case-insensitive substring (``re.escape``: regex metacharacters match themselves) of the
  messages' ``content``, scanned per conversation through the ``(conversationId, seq)``
  index; titles are matched in the service. The scan grows with the messages in scope:
  ``SEARCH_SECONDS`` bounds it (then ``TIMEOUT``: search something narrower).

Hits, newest first (a conversation by its ``createdAt``, a message by its own), paged by an
opaque cursor: ``{kind: "conversation", conversationId, title, createdAt}`` or ``{kind:
"message", conversationId, title, message: {_id, seq, role, messageType, name, createdAt,
snippet}}`` (``snippet``: the text around the match, at most ~``SNIPPET_CHARS``).
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo import DESCENDING
from pymongo.errors import ExecutionTimeout

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.internal import Principal
from parley_contract.queries import SearchQuery
from parley_contract.timeutil import iso
from parley_conversation.entries import LOG_EVENT

if TYPE_CHECKING:
    from parley_conversation.store import MongoStore

MAX_SCOPE = 1000  # conversations searched: the caller's most recently created
SCOPE_CHUNK = 50  # conversation ids per message query on MongoDB
PARALLEL_QUERIES = 8  # message queries of one search at once
SEARCH_SECONDS = 5.0
SNIPPET_CHARS = 160


@dataclass(frozen=True, slots=True)
class _Key:
    """Where a hit sorts: newest first, then by id (descending), the kinds interleaved."""

    at: datetime
    kind: str
    id: str

    def before(self, other: _Key) -> bool:
        return (self.at, self.kind, self.id) < (other.at, other.kind, other.id)


def encode_cursor(key: _Key) -> str:
    raw = f"{int(key.at.timestamp() * 1000)}:{key.kind}:{key.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, kind, hit_id = raw.split(":", 2)
        if kind not in ("c", "m"):
            raise ValueError(kind)
        return _Key(datetime.fromtimestamp(int(ms) / 1000, tz=UTC), kind, hit_id)
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "cursor: not a cursor from this API", {"field": "cursor"}
        ) from None


def snippet(content: str, q: str) -> str:
    """The text around the first match of ``q`` (whole words of it in text mode)."""
    text = " ".join(content.split())
    at = text.casefold().find(q.casefold())
    if at < 0 or len(text) <= SNIPPET_CHARS:
        return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"
    start = max(0, at - (SNIPPET_CHARS - len(q)) // 2)
    end = min(len(text), start + max(SNIPPET_CHARS, len(q)))
    start = max(0, end - max(SNIPPET_CHARS, len(q)))
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _ms(value: Any) -> datetime:
    """A stored time as an aware datetime in whole milliseconds (what BSON keeps)."""
    if not isinstance(value, datetime):
        return datetime.fromtimestamp(0, tz=UTC)
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _messages_after(key: _Key) -> dict[str, Any]:
    """The messages that sort after ``key``: older, or as old with a lower id when the key is
    a message (at the same millisecond messages sort before conversations)."""
    if key.kind == "c":
        return {"createdAt": {"$lt": key.at}}
    return {"$or": [{"createdAt": {"$lt": key.at}}, {"createdAt": key.at, "_id": {"$lt": key.id}}]}


async def search(store: MongoStore, principal: Principal, query: SearchQuery) -> dict[str, Any]:
    """One page of hits (see the module's docstring)."""
    try:
        async with asyncio.timeout(SEARCH_SECONDS):
            return await _search(store, principal, query)
    except (TimeoutError, ExecutionTimeout):
        raise ParleyError(
            ErrorCode.TIMEOUT,
            f"the search took longer than {SEARCH_SECONDS:g} s: search something narrower",
        ) from None


async def _search(store: MongoStore, principal: Principal, query: SearchQuery) -> dict[str, Any]:
    q, limit = query.q, query.limit
    key = decode_cursor(query.cursor) if query.cursor else None
    text = store.search_mode == "text"
    scope = await (
        store.conversations.find(
            store.participant_filter(principal), {"_id": 1, "title": 1, "createdAt": 1}
        )
        .sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
        .limit(MAX_SCOPE)
        .to_list()
    )
    titles = {str(c["_id"]): str(c.get("title") or "") for c in scope}
    hits: list[tuple[_Key, dict[str, Any]]] = []
    # Titles: in the service (regex mode), or by the text index among the scope.
    if text:
        ids = list(titles)
        found = await store.conversations.find(
            {"_id": {"$in": ids}, "$text": {"$search": _phrase(q)}}, {"_id": 1}
        ).to_list()
        matched = {str(d["_id"]) for d in found}
    else:
        folded = q.casefold()
        matched = {cid for cid, title in titles.items() if folded in title.casefold()}
    for conv in scope:
        cid = str(conv["_id"])
        if cid not in matched:
            continue
        hit_key = _Key(_ms(conv.get("createdAt")), "c", cid)
        if key is None or hit_key.before(key):
            hits.append(
                (
                    hit_key,
                    {
                        "kind": "conversation",
                        "conversationId": cid,
                        "title": titles[cid],
                        "createdAt": iso(hit_key.at),
                    },
                )
            )
    # Messages: per chunk of the scope, the newest `limit + 1` after the cursor each.
    match: dict[str, Any] = (
        {"$text": {"$search": _phrase(q)}}
        if text
        else {"content": {"$regex": re.escape(q), "$options": "i"}}
    )
    ids = list(titles)
    # MongoDB plans an `$in` on the indexed conversationId well; the embedded store scans the
    # whole collection for one, but uses the (conversationId, seq) index for an equality.
    if text:
        chunks = [ids[i : i + SCOPE_CHUNK] for i in range(0, len(ids), SCOPE_CHUNK)]
    else:
        chunks = [[cid] for cid in ids]
    running = asyncio.Semaphore(PARALLEL_QUERIES)

    async def chunk_hits(chunk: list[str]) -> list[dict[str, Any]]:
        # One flat filter (the embedded store's planner uses the index only then).
        which: Any = chunk[0] if len(chunk) == 1 else {"$in": chunk}
        flt: dict[str, Any] = {
            "conversationId": which,
            LOG_EVENT: {"$exists": False},
            "deletedAt": None,
            **match,
            **(_messages_after(key) if key is not None else {}),
        }
        async with running:
            return await (
                store.messages.find(
                    flt,
                    {
                        "_id": 1,
                        "conversationId": 1,
                        "seq": 1,
                        "role": 1,
                        "messageType": 1,
                        "name": 1,
                        "createdAt": 1,
                        "content": 1,
                    },
                    max_time_ms=int(SEARCH_SECONDS * 1000),
                )
                .sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
                .limit(limit + 1)
                .to_list()
            )

    for docs in await asyncio.gather(*(chunk_hits(c) for c in chunks)):
        for d in docs:
            hit_key = _Key(_ms(d.get("createdAt")), "m", str(d["_id"]))
            cid = str(d["conversationId"])
            message = {
                "_id": str(d["_id"]),
                "seq": d.get("seq"),
                "role": d.get("role"),
                "messageType": d.get("messageType", "text"),
                "name": d.get("name"),
                "createdAt": iso(hit_key.at),
                "snippet": snippet(str(d.get("content") or ""), q),
            }
            hits.append(
                (
                    hit_key,
                    {
                        "kind": "message",
                        "conversationId": cid,
                        "title": titles.get(cid, ""),
                        "message": message,
                    },
                )
            )
    hits.sort(key=lambda h: (h[0].at, h[0].kind, h[0].id), reverse=True)
    page = hits[:limit]
    more = len(hits) > limit
    return {
        "items": [item for _, item in page],
        "nextCursor": encode_cursor(page[-1][0]) if more and page else None,
        "mode": store.search_mode,
    }


def _phrase(q: str) -> str:
    """``q`` as one ``$text`` phrase (its own quotes and a leading '-' lose their meaning)."""
    return '"' + q.replace('"', " ").replace("\\", " ") + '"'
