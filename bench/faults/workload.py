"""The steady load: conversations of users spread over both gateways, each user sending.

Conversation ``r`` has ``members`` users; member ``j`` first connects to gateway
``(r + j) % gateways``. Member 0 creates the conversation (client-chosen id, the others as
participants) and everyone joins before the first send, so every member must be given every
message of its conversation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from bench.faults.clients import LoadClient, send_loop
from parley_contract.auth import mint_token
from parley_contract.events import Event

logger = logging.getLogger(__name__)


class Workload:
    def __init__(
        self,
        ws_urls: list[str],
        http_urls: list[str],
        prefix: str,
        *,
        conversations: int = 4,
        members: int = 5,
        interval: float = 0.5,
        resume_with_since: bool = True,
    ) -> None:
        self.http_urls = http_urls
        self.interval = interval
        self.convs: dict[str, list[LoadClient]] = {}
        self.clients: list[LoadClient] = []
        for r in range(conversations):
            conv = f"{prefix}-c{r}"
            members_of: list[LoadClient] = []
            for j in range(members):
                user = f"{prefix}-u{r}-{j}"
                client = LoadClient(
                    user,
                    mint_token(user, ttl_seconds=3600),
                    ws_urls,
                    (r + j) % len(ws_urls),
                    resume_with_since,
                )
                members_of.append(client)
                self.clients.append(client)
            self.convs[conv] = members_of
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def setup(self) -> None:
        await asyncio.gather(*(c.connect() for c in self.clients))
        for conv, members in self.convs.items():
            owner = members[0]
            reply = await owner.call(
                Event.CONVERSATION_CREATE.value,
                {
                    "conversationId": conv,
                    "title": f"faults {conv}",
                    "participants": [m.user for m in members[1:]],
                },
            )
            if not reply.get("success"):
                raise RuntimeError(f"create {conv} failed: {reply}")
        await asyncio.gather(*(m.join(conv) for conv, ms in self.convs.items() for m in ms))

    def start(self) -> None:
        for conv, members in self.convs.items():
            for client in members:
                self._tasks.append(
                    asyncio.create_task(send_loop(client, conv, self.interval, self._stop))
                )

    async def stop(self, drain: float = 2.0) -> None:
        """Stop sending (each loop ends its current send), then let the last events arrive."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await asyncio.sleep(drain)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    async def histories(self) -> dict[str, list[dict[str, Any]]]:
        return {
            conv: await read_history(self.http_urls, members[0].token, conv)
            for conv, members in self.convs.items()
        }


async def read_history(http_urls: list[str], token: str, conv: str) -> list[dict[str, Any]]:
    """Every stored message of a conversation, over the HTTP API (any gateway that answers)."""
    headers = {"Authorization": f"Bearer {token}"}
    last_error: Exception | None = None
    for attempt in range(20):
        base = http_urls[attempt % len(http_urls)]
        items: list[dict[str, Any]] = []
        after = 0
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                while True:
                    resp = await http.get(
                        f"/v1/conversations/{conv}/messages",
                        params={"afterSeq": after, "limit": 500},
                        headers=headers,
                    )
                    resp.raise_for_status()
                    data = resp.json()["data"]
                    items += data["items"]
                    if not data["items"] or not data["hasMore"]:
                        return items
                    after = int(data["items"][-1]["seq"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
            await asyncio.sleep(0.5)
    raise RuntimeError(f"history of {conv} unreadable: {last_error!r}")
