"""Issue 12, finding 3, at the issue's scale: poisoned ``message:send`` frames (metadata
``{"n": 9223372036854775808}``, an integer BSON cannot hold) among other users' sends,
through a whole stack (two gateways, the conversation service, NATS, the embedded store).

``python -m bench.experiments.poisoned_sends [users] [poisoned] [seconds]`` (default 720, 72,
10): each user sends one message, spread evenly over ``seconds`` (open loop, so the figure
is about isolation, not overload), the poisoned frames likewise; prints the outcome codes of
both. Before the fix every message batched with a poisoned one got INTERNAL_ERROR.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.servers import free_port
from parley_devstack.stack import Stack, StackConfig

ROOMS = 24
POISON = '{"n": 9223372036854775808}'


async def _client(url: str, sub: str) -> ClientConnection:
    token = mint_token(sub, PrincipalKind.USER, name=sub)
    ws = await websockets.connect(f"{url}?access_token={token}", max_size=None)
    while json.loads(await ws.recv()).get("event") != "connected":
        pass
    return ws


async def _command(ws: ClientConnection, text: str, frame_id: str) -> dict[str, Any]:
    await ws.send(text)
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame.get("id") == frame_id:
            return frame


def _outcome(frame: dict[str, Any]) -> str:
    return "ok" if frame.get("success") else str(frame["error"]["code"])


async def run(stack: Stack, n_users: int, n_bad: int, span: float) -> tuple[Counter[str], ...]:
    users = [f"u{i:05d}" for i in range(n_users)]
    owner = await _client(stack.ws_url(0), "owner")
    per = max(1, n_users // ROOMS)
    rooms: list[str] = []
    for r in range(0, n_users, per):
        create = {
            "event": "conversation:create",
            "id": "c",
            "data": {"participants": users[r : r + per]},
        }
        rooms.append((await _command(owner, json.dumps(create), "c"))["data"]["_id"])
    socks = await asyncio.gather(*(_client(stack.ws_url(i % 2), u) for i, u in enumerate(users)))

    async def good(i: int, ws: ClientConnection) -> dict[str, Any]:
        await asyncio.sleep(i * span / n_users)
        data = {"conversationId": rooms[i // per], "content": f"hello {i}"}
        return await _command(
            ws, json.dumps({"event": "message:send", "id": "g", "data": data}), "g"
        )

    async def bad(k: int) -> dict[str, Any]:
        await asyncio.sleep(k * span / max(1, n_bad))
        ws = await _client(stack.ws_url(k % 2), "owner")
        data = (
            f'{{"conversationId": "{rooms[k % len(rooms)]}", "content": "x", "metadata": {POISON}}}'
        )
        return await _command(ws, f'{{"event": "message:send", "id": "b", "data": {data}}}', "b")

    replies = await asyncio.gather(
        *(good(i, ws) for i, ws in enumerate(socks)), *(bad(k) for k in range(n_bad))
    )
    return Counter(map(_outcome, replies[:n_users])), Counter(map(_outcome, replies[n_users:]))


def main() -> None:
    args = [*sys.argv[1:], "", "", ""]
    n_users, n_bad = int(args[0] or 720), int(args[1] or 72)
    span = float(args[2] or 10)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig(
            workdir=Path(tmp),
            gateway_ports=[free_port(), free_port()],
            agent_bridges=0,
            service_env={"gateway": {"PARLEY_GATEWAY_COMMANDS_PER_SECOND": "1000"}},
        )
        with Stack(cfg) as stack:
            started = time.monotonic()
            goods, bads = asyncio.run(run(stack, n_users, n_bad, span))
            took = time.monotonic() - started
    sys.stdout.write(f"other users' sends ({n_users}): {dict(goods)}\n")
    sys.stdout.write(f"poisoned sends ({n_bad}): {dict(bads)}; {took:.1f} s\n")


if __name__ == "__main__":
    main()
