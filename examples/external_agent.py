"""An external agent: a process of its own that talks to Parley like any client.

It connects to a gateway's WebSocket with an ``agent`` token (``kind: agent``), joins the
conversations it is assigned to, and answers each user message itself by posting the same
message types the agent bridge writes: ``thinking``, ``tool_call``, ``tool_result`` (role
``tool``) and the final ``text`` (with usage and latency). It runs its tool locally (a word
counter); ``--platform-tool NAME`` asks the platform to run a tool instead (``tool:call``,
answered by the agent bridge, e.g. ``web_search`` of the offline demo tools).

Requires only ``websockets`` (and ``parley_contract`` for ``--dev-token``):

    python examples/external_agent.py --agent-id agent-ext --dev-token \
        --ws ws://127.0.0.1:8001/ws --http http://127.0.0.1:8001

Assign it with ``conversation:create {"agentId": "agent-ext"}`` (or ``conversation:update``).
The agent bridge skips turns of agents it does not configure, so this process answers
alone. See services/agent-bridge/README.md, "External agents".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from typing import Any

import websockets

try:  # only for --dev-token; outside the Parley workspace pass --token
    from parley_contract.auth import mint_token
    from parley_contract.events import PrincipalKind
except ImportError:  # pragma: no cover
    mint_token = None  # type: ignore[assignment]

logger = logging.getLogger("external_agent")

# The public protocol's event names, spelled once here as any client spells them (the web
# client does the same in web/src/protocol.ts); Parley's services use parley_contract.events.
MESSAGE_SEND = "message:send"
MESSAGE_NEW = "message:new"
CONVERSATION_JOIN = "conversation:join"
CONVERSATION_CREATED = "conversation:created"
CONVERSATION_UPDATED = "conversation:updated"
TOOL_CALL = "tool:call"


class ExternalAgent:
    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.args = args
        self.token = token
        self.ws: Any = None
        self.joined: set[str] = set()
        self.answered: set[str] = set()  # user message ids answered (parentMessageId)
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.n = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ plumbing

    def http_get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.args.http.rstrip('/')}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        if not body.get("success"):
            raise RuntimeError(f"GET {path} failed: {body.get('error')}")
        return body["data"]

    async def call(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """A command with an id; the reply envelope."""
        self.n += 1
        cmd_id = f"ext-{self.n}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[cmd_id] = future
        await self.ws.send(json.dumps({"event": event, "id": cmd_id, "data": data}))
        try:
            return await asyncio.wait_for(future, 30)
        finally:
            self.pending.pop(cmd_id, None)

    async def post(self, data: dict[str, Any]) -> dict[str, Any]:
        reply = await self.call(MESSAGE_SEND, data)
        if not reply.get("success"):
            raise RuntimeError(f"message:send refused: {reply.get('error')}")
        stored: dict[str, Any] = reply["data"]
        return stored

    # ------------------------------------------------------------------ conversations

    async def join_assigned(self) -> None:
        """Join the conversations this agent is assigned to; answer what is still open."""
        data = await asyncio.to_thread(self.http_get, "/v1/conversations", limit=100)
        for conv in data.get("items", []):
            cid = conv.get("_id") or conv.get("conversationId")
            if cid and cid not in self.joined and conv.get("agentId") == self.args.agent_id:
                await self.join(cid)

    async def join(self, cid: str) -> None:
        page = await asyncio.to_thread(
            self.http_get, f"/v1/conversations/{cid}/messages", limit=200
        )
        items = page.get("items", [])
        for m in items:
            if m.get("role") == "assistant" and m.get("parentMessageId"):
                self.answered.add(m["parentMessageId"])
        last = max((m.get("seq") or 0 for m in items), default=0)
        reply = await self.call(CONVERSATION_JOIN, {"conversationId": cid, "sinceSeq": last})
        if not reply.get("success"):
            logger.warning("cannot join %s: %s", cid, reply.get("error"))
            return
        self.joined.add(cid)
        logger.info("joined %s", cid)
        for m in items:  # user messages sent while this agent was away
            if m.get("role") == "user" and m["_id"] not in self.answered:
                self.spawn(self.answer(m))

    # ------------------------------------------------------------------ the answer

    async def answer(self, user: dict[str, Any]) -> None:
        if user["_id"] in self.answered:
            return
        self.answered.add(user["_id"])
        cid, parent = user["conversationId"], user["_id"]
        started = time.monotonic()
        base = {"conversationId": cid, "parentMessageId": parent}
        text = str(user.get("content") or "")
        try:
            await self.post(
                {
                    **base,
                    "clientMessageId": f"{parent}-thinking",
                    "role": "assistant",
                    "messageType": "thinking",
                    "content": "",
                    "thinking": {
                        "content": "I'll count the words with my tool, then answer.",
                        "visible": True,
                        "duration": 5,
                    },
                }
            )
            tool = self.args.platform_tool or "word_count"
            arguments = {"query": text} if self.args.platform_tool else {"text": text}
            call_id = f"call_{parent}"[:64]
            await self.post(
                {
                    **base,
                    "clientMessageId": f"{parent}-call",
                    "role": "assistant",
                    "messageType": "tool_call",
                    "content": f"Calling {tool}...",
                    "toolCalls": [
                        {
                            "id": call_id,
                            "type": "mcp_tool",
                            "function": {"name": tool, "arguments": json.dumps(arguments)},
                        }
                    ],
                }
            )
            t0 = time.monotonic()
            if self.args.platform_tool:
                reply = await self.call(
                    TOOL_CALL, {"toolName": tool, "arguments": arguments, "conversationId": cid}
                )
                if reply.get("success"):
                    out = reply["data"]
                    result, ok, error = (
                        out.get("result"),
                        bool(out.get("success")),
                        out.get("error"),
                    )
                else:
                    result, ok, error = None, False, str(reply.get("error"))
            else:
                result, ok, error = {"words": len(text.split())}, True, None
            tool_result: dict[str, Any] = {
                "toolCallId": call_id,
                "toolName": tool,
                "result": result,
                "success": ok,
                "executionTime": round((time.monotonic() - t0) * 1000, 1),
            }
            if error:
                tool_result["error"] = error
            await self.post(
                {
                    **base,
                    "clientMessageId": f"{parent}-result",
                    "role": "tool",
                    "messageType": "tool_result",
                    "name": tool,
                    "content": "Tool execution completed" if ok else "Tool execution failed",
                    "toolResults": [tool_result],
                }
            )
            summary = (
                f"Your message has {result['words']} words."
                if ok and isinstance(result, dict) and "words" in result
                else (
                    f"The tool answered: {json.dumps(result)[:300]}"
                    if ok
                    else f"The tool failed: {error}"
                )
            )
            await self.post(
                {
                    **base,
                    "clientMessageId": f"{parent}-answer",
                    "role": "assistant",
                    "messageType": "text",
                    "content": f"(external agent {self.args.agent_id}) {summary}",
                    "usage": {"promptTokens": 0, "completionTokens": 0, "totalTokens": 0},
                    "latency": round((time.monotonic() - started) * 1000, 1),
                    "finishReason": "stop",
                }
            )
        except (RuntimeError, TimeoutError) as exc:
            logger.warning("answering %s failed: %s", parent, exc)

    # ------------------------------------------------------------------ main loop

    async def handle(self, frame: dict[str, Any]) -> None:
        if frame.get("id") in self.pending:
            future = self.pending[frame["id"]]
            if not future.done():
                future.set_result(frame)
            return
        event, data = frame.get("event"), frame.get("data") or {}
        if event == MESSAGE_NEW and data.get("role") == "user":
            self.spawn(self.answer(data))
        elif (
            event in (CONVERSATION_CREATED, CONVERSATION_UPDATED)
            and data.get("agentId") == self.args.agent_id
            and data.get("_id") not in self.joined
        ):
            self.spawn(self.join(data["_id"]))

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.args.poll_seconds)
            with contextlib.suppress(RuntimeError, OSError):
                await self.join_assigned()

    async def run(self) -> None:
        url = f"{self.args.ws}?access_token={urllib.parse.quote(self.token)}"
        async for ws in websockets.connect(url, max_size=None):  # reconnects with backoff
            self.ws = ws
            self.joined.clear()
            poller: asyncio.Task[None] | None = None
            try:
                reader = asyncio.create_task(self.read())
                await self.join_assigned()
                poller = asyncio.create_task(self.poll())
                await reader
            except websockets.ConnectionClosed:
                logger.info("connection closed; reconnecting")
            finally:
                if poller is not None:
                    poller.cancel()

    async def read(self) -> None:
        async for raw in self.ws:
            await self.handle(json.loads(raw))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ws", default=os.environ.get("PARLEY_WS_URL", "ws://127.0.0.1:8001/ws"))
    parser.add_argument(
        "--http", default=os.environ.get("PARLEY_HTTP_URL", "http://127.0.0.1:8001")
    )
    parser.add_argument("--agent-id", default=os.environ.get("PARLEY_AGENT_ID", "agent-ext"))
    parser.add_argument("--token", default=os.environ.get("PARLEY_AGENT_TOKEN"), help="agent JWT")
    parser.add_argument("--dev-token", action="store_true", help="mint a development token")
    parser.add_argument("--platform-tool", default=None, help="run this tool via tool:call")
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = args.token
    if args.dev_token:
        if mint_token is None:
            parser.error("--dev-token needs parley_contract (run inside the Parley workspace)")
        token = mint_token(args.agent_id, PrincipalKind.AGENT, name=f"External {args.agent_id}")
    if not token:
        parser.error("give --token (or PARLEY_AGENT_TOKEN), or --dev-token in development")
    asyncio.run(ExternalAgent(args, token).run())


if __name__ == "__main__":
    main()
