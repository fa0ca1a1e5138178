"""A local OpenAI-compatible chat-completions server with scripted streaming responses.

Used by the tests (never a live model) and handy for local demos; started on a free port
in a thread of its own. A script is
chosen by a trigger word in the conversation's last user message; the step (which scripted
response) is the number of assistant tool-call messages after that user message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Step:
    """One scripted model response."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # id, name, args
    usage: tuple[int, int] | None = (100, 20)
    status: int = 200  # != 200: an HTTP error with a JSON body
    delay: float = 0.0  # between chunks
    finish_reason: str | None = None


class OpenAIStub:
    def __init__(self) -> None:
        self.scripts: dict[str, list[Step]] = {}
        self.requests: list[dict[str, Any]] = []
        # Bound now and handed to uvicorn: the port is ours from the start (no free-port race).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, trigger: str, *steps: Step) -> None:
        self.scripts[trigger] = list(steps)

    def _pick(self, messages: list[dict[str, Any]]) -> Step:
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        content = messages[last_user].get("content")
        if isinstance(content, list):  # parts: the text ones (image parts carry no trigger)
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        text = str(content or "")
        step = sum(
            1
            for m in messages[last_user + 1 :]
            if m.get("role") == "assistant" and m.get("tool_calls")
        )
        for trigger, steps in self.scripts.items():
            if trigger in text:
                return steps[min(step, len(steps) - 1)]
        return Step(content=["I have ", "no script ", "for that."])

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        step = self._pick(body["messages"])
        if step.status != 200:
            return JSONResponse(
                {"error": {"message": "scripted backend failure", "type": "server_error"}},
                status_code=step.status,
            )

        async def events() -> Any:
            base = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
            }

            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(data)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for piece in step.reasoning:
                await asyncio.sleep(step.delay)
                yield chunk({"reasoning_content": piece})
            for piece in step.content:
                await asyncio.sleep(step.delay)
                yield chunk({"content": piece})
            for i, (call_id, name, args) in enumerate(step.tool_calls):
                # Split name and arguments over chunks, as real servers do.
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
                half = len(args) // 2
                for part in (args[:half], args[half:]):
                    yield chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
            finish = step.finish_reason or ("tool_calls" if step.tool_calls else "stop")
            yield chunk({}, finish)
            if step.usage is not None:
                usage = {
                    "prompt_tokens": step.usage[0],
                    "completion_tokens": step.usage[1],
                    "total_tokens": sum(step.usage),
                }
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def start(self) -> OpenAIStub:
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("OpenAI stub did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
