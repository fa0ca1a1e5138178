"""An external agent: a process of its own that talks to Parley like any client.

It connects to a gateway with an ``agent`` token (``kind: agent``) through the Python client
(``libs/client``: gateways in turn, exact resume, idempotent sends, typed events), joins
the conversations it is assigned to, and answers each user message itself by posting the
same message types the agent bridge writes: ``thinking``, ``tool_call``, ``tool_result``
(role ``tool``) and the final ``text`` (with usage and latency). It runs its tool locally (a
word counter); ``--platform-tool NAME`` asks the platform to run a tool instead
(``tool:call``, answered by the agent bridge, e.g. ``web_search`` of the offline demo tools).

    python examples/external_agent.py --agent-id agent-ext --dev-token \
        --gateway http://127.0.0.1:8001 --gateway http://127.0.0.1:8002

Assign it with ``conversation:create {"agentId": "agent-ext"}`` (or ``conversation:update``).
The agent bridge skips turns of agents it does not configure, so this process answers
alone. Each step's ``clientMessageId`` is derived from the user message, so an answer
interrupted by a crash or a dropped connection is completed, never stored twice. See
services/agent-bridge/README.md, "External agents".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from parley_client import Event, ParleyClient, ParleyError
from parley_contract.models import Conversation, Message, Role

logger = logging.getLogger("external_agent")


class ExternalAgent:
    def __init__(self, client: ParleyClient, agent_id: str, platform_tool: str | None) -> None:
        self.client = client
        self.agent_id = agent_id
        self.platform_tool = platform_tool
        self.answered: set[str] = set()  # user message ids answered (parentMessageId)
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ conversations

    async def join_assigned(self) -> None:
        """Join the conversations this agent is assigned to; answer what is still open."""
        for conv in await self.client.list_conversations(limit=100):
            if conv.agent_id == self.agent_id and conv.id not in self.client.joined:
                await self.join(conv.id)

    async def join(self, cid: str) -> None:
        items, _ = await self.client.messages(cid, limit=200)
        for m in items:
            if m.role is Role.ASSISTANT and m.parent_message_id:
                self.answered.add(m.parent_message_id)
        last = max((m.seq or 0 for m in items), default=0)
        try:
            await self.client.join(cid, since_seq=last)
        except ParleyError as exc:
            logger.warning("cannot join %s: %s", cid, exc.message)
            return
        logger.info("joined %s", cid)
        for m in items:  # user messages sent while this agent was away
            if m.role is Role.USER and m.id not in self.answered:
                self.spawn(self.answer(m))

    # ------------------------------------------------------------------ the answer

    async def answer(self, user: Message) -> None:
        if user.id in self.answered:
            return
        self.answered.add(user.id)
        cid, parent = user.conversation_id, user.id
        started = time.monotonic()
        post = self.client.send_message
        try:
            await post(
                cid,
                "",
                client_message_id=f"{parent}-thinking",
                parent_message_id=parent,
                role="assistant",
                message_type="thinking",
                thinking={
                    "content": "I'll count the words with my tool, then answer.",
                    "visible": True,
                    "duration": 5,
                },
            )
            tool = self.platform_tool or "word_count"
            arguments = {"query": user.content} if self.platform_tool else {"text": user.content}
            call_id = f"call_{parent}"[:64]
            await post(
                cid,
                f"Calling {tool}...",
                client_message_id=f"{parent}-call",
                parent_message_id=parent,
                role="assistant",
                message_type="tool_call",
                tool_calls=[
                    {
                        "id": call_id,
                        "type": "mcp_tool",
                        "function": {"name": tool, "arguments": json.dumps(arguments)},
                    }
                ],
            )
            t0 = time.monotonic()
            result, ok, error = await self.run_tool(tool, arguments, cid)
            tool_result: dict[str, Any] = {
                "toolCallId": call_id,
                "toolName": tool,
                "result": result,
                "success": ok,
                "executionTime": round((time.monotonic() - t0) * 1000, 1),
            }
            if error:
                tool_result["error"] = error
            await post(
                cid,
                "Tool execution completed" if ok else "Tool execution failed",
                client_message_id=f"{parent}-result",
                parent_message_id=parent,
                role="tool",
                message_type="tool_result",
                name=tool,
                tool_results=[tool_result],
            )
            if ok and isinstance(result, dict) and "words" in result:
                summary = f"Your message has {result['words']} words."
            elif ok:
                summary = f"The tool answered: {json.dumps(result)[:300]}"
            else:
                summary = f"The tool failed: {error}"
            await post(
                cid,
                f"(external agent {self.agent_id}) {summary}",
                client_message_id=f"{parent}-answer",
                parent_message_id=parent,
                role="assistant",
                message_type="text",
                usage={"promptTokens": 0, "completionTokens": 0, "totalTokens": 0},
                latency=round((time.monotonic() - started) * 1000, 1),
                finish_reason="stop",
            )
        except ParleyError as exc:
            logger.warning("answering %s failed: %s %s", parent, exc.code.value, exc.message)

    async def run_tool(
        self, tool: str, arguments: dict[str, Any], cid: str
    ) -> tuple[Any, bool, str | None]:
        if not self.platform_tool:
            return {"words": len(str(arguments["text"]).split())}, True, None
        try:
            out = await self.client.call_tool(tool, arguments, conversation_id=cid)
        except ParleyError as exc:
            return None, False, f"{exc.code.value}: {exc.message}"
        return out.get("result"), bool(out.get("success")), out.get("error")

    # ------------------------------------------------------------------ main loop

    async def poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(ParleyError, OSError):
                await self.join_assigned()

    async def run(self, poll_seconds: float) -> None:
        events = self.client.events()
        await self.join_assigned()
        poller = asyncio.create_task(self.poll(poll_seconds))
        try:
            async for frame in events:
                data = frame.data
                if frame.event == Event.MESSAGE_NEW and isinstance(data, Message):
                    if data.role is Role.USER:
                        self.spawn(self.answer(data))
                elif (
                    frame.event in (Event.CONVERSATION_CREATED, Event.CONVERSATION_UPDATED)
                    and isinstance(data, Conversation)
                    and data.agent_id == self.agent_id
                    and data.id not in self.client.joined
                ):
                    self.spawn(self.join(data.id))
        finally:
            poller.cancel()


def dev_token(agent_id: str) -> str:
    """A development token (HS256, the dev secret): only inside the Parley workspace."""
    from parley_contract.auth import mint_token  # noqa: PLC0415
    from parley_contract.events import PrincipalKind  # noqa: PLC0415

    return mint_token(agent_id, PrincipalKind.AGENT, name=f"External {agent_id}")


async def amain(args: argparse.Namespace, token: str) -> None:
    async with ParleyClient(args.gateways, token) as client:
        logger.info("connected to %s as %s", client.current_url, args.agent_id)
        await ExternalAgent(client, args.agent_id, args.platform_tool).run(args.poll_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gateway",
        "--http",
        "--ws",
        dest="gateways",
        action="append",
        help="a gateway (http://host:port or ws://host:port/ws); repeat for fallbacks",
    )
    parser.add_argument("--agent-id", default=os.environ.get("PARLEY_AGENT_ID", "agent-ext"))
    parser.add_argument("--token", default=os.environ.get("PARLEY_AGENT_TOKEN"), help="agent JWT")
    parser.add_argument("--dev-token", action="store_true", help="mint a development token")
    parser.add_argument("--platform-tool", default=None, help="run this tool via tool:call")
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    args = parser.parse_args()
    default = os.environ.get("PARLEY_GATEWAY_URLS", "http://127.0.0.1:8001")
    gateways = args.gateways or default.split(",")
    # --ws and --http of the same gateway are one gateway.
    args.gateways = list(dict.fromkeys(_base(g) for g in gateways))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = dev_token(args.agent_id) if args.dev_token else args.token
    if not token:
        parser.error("give --token (or PARLEY_AGENT_TOKEN), or --dev-token in development")
    asyncio.run(amain(args, token))


def _base(url: str) -> str:
    url = url.rstrip("/").removesuffix("/ws")
    return url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)


if __name__ == "__main__":
    main()
