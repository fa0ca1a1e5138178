"""Issue 12, findings 3 and 4, as an attacker tries them against a real stack: a gateway
process, the conversation service, NATS and the store (parley_devstack's Stack).

- Unstorable values in message:send (metadata integers beyond 64 bits, ...) among other
  users' sends: only the sender gets VALIDATION_ERROR, every other message is stored.
- Out-of-range numeric HTTP parameters: 422 in the error envelope, never a 500.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .conftest import http_get, token


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(
        nats_server, store_server, servers_dir, "hostile", gateway_ports=[free_port()]
    ) as s:
        yield s


async def aget(url: str, tok: str | None = None) -> tuple[int, bytes, Any]:
    return await asyncio.to_thread(http_get, url, tok)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


POISONED_FRAMES = [
    # orjson reads integers up to 2**64-1 as ints: the first would reach the store's batch.
    '{"n": 9223372036854775808}',
    '{"n": 18446744073709551615}',
    '{"$where": "sleep(1000)"}',
    '{"a": {"b.c": 1}}',
]


async def test_poisoned_sends_fail_alone(stack: Stack, clients: Any) -> None:
    owner = _uid("owner")
    users = [_uid("u") for _ in range(12)]
    alice = await clients(stack.ws_url(0), owner)
    r = await alice.cmd("conversation:create", {"participants": users})
    assert r["success"], r
    cid = r["data"]["_id"]
    socks = [await clients(stack.ws_url(0), u) for u in users]

    async def good(c: Any, u: str, i: int) -> Any:
        return await c.cmd("message:send", {"conversationId": cid, "content": f"{u} {i}"})

    async def poisoned(meta: str, n: int) -> Any:
        data = f'{{"conversationId": "{cid}", "content": "x", "metadata": {meta}}}'
        frame = f'{{"event": "message:send", "id": "bad-{n}", "data": {data}}}'
        await alice.send_raw(frame)
        return await alice.wait_for(lambda f: f.get("id") == f"bad-{n}")

    rounds = 3
    work = [good(c, u, i) for i in range(rounds) for c, u in zip(socks, users, strict=True)]
    work += [poisoned(m, n) for n, m in enumerate(POISONED_FRAMES)]
    replies = await asyncio.gather(*work)
    goods, bads = replies[: len(users) * rounds], replies[len(users) * rounds :]
    assert all(r["success"] for r in goods), [r for r in goods if not r["success"]]
    for r, meta in zip(bads, POISONED_FRAMES, strict=True):
        assert not r["success"] and r["error"]["code"] == "VALIDATION_ERROR", (meta, r)
        assert r["error"]["details"]["field"].startswith("metadata"), r

    status, body, _ = await aget(
        f"{stack.gateway_url(0)}/v1/conversations/{cid}/messages?limit=500", token(owner)
    )
    assert status == 200, body
    items = jsonutil.loads(body)["data"]["items"]
    assert len(items) == len(users) * rounds
    assert all(m["content"] != "x" for m in items)


@pytest.mark.parametrize(
    "query",
    [
        "afterSeq=9223372036854775808",
        "beforeSeq=9223372036854775808",
        "afterSeq=9999999999999999999999999999",
        "beforeSeq=-9999999999999999999999999999",
        "afterSeq=" + "9" * 5000,  # beyond Python's int-from-str digit limit
        "afterSeq=-1",
        "beforeSeq=0",
        "limit=0",
        "limit=501",
        "limit=9223372036854775808",
        "afterSeq=1e3",
        "afterSeq=0x10",
        "afterSeq=NaN",
    ],
)
async def test_out_of_range_history_parameters_are_422(stack: Stack, query: str) -> None:
    owner = _uid("owner")
    tok = token(owner)
    status, body, _ = await aget(f"{stack.gateway_url(0)}/v1/conversations?limit=1", tok)
    assert status == 200, body
    url = f"{stack.gateway_url(0)}/v1/conversations/conv-x/messages?{query}"
    status, body, headers = await aget(url, tok)
    assert status == 422, (query[:40], status, body[:200])
    assert headers["Content-Type"].startswith("application/json")
    doc = jsonutil.loads(body)
    assert doc["success"] is False and doc["error"]["code"] == "VALIDATION_ERROR"
    assert doc["error"]["details"]["field"] in ("afterSeq", "beforeSeq", "limit")


async def test_the_largest_seq_is_a_valid_question(stack: Stack, clients: Any) -> None:
    owner = _uid("owner")
    alice = await clients(stack.ws_url(0), owner)
    r = await alice.cmd("conversation:create", {})
    cid = r["data"]["_id"]
    for q in ("afterSeq=9223372036854775807", "beforeSeq=9223372036854775807", "afterSeq=0"):
        url = f"{stack.gateway_url(0)}/v1/conversations/{cid}/messages?{q}"
        status, body, _ = await aget(url, token(owner))
        assert status == 200, (q, body)
