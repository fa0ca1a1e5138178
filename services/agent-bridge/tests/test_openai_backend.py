"""OpenAIChatBackend against a local OpenAI-compatible server with scripted SSE."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from parley_agent_bridge.backends import (
    BackendError,
    Finish,
    ModelEvent,
    OpenAIChatBackend,
    ReasoningDelta,
    TextDelta,
    ToolCalls,
)
from parley_agent_bridge.openai_stub import OpenAIStub, Step


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    server = OpenAIStub().start()
    yield server
    server.stop()


async def collect(backend: OpenAIChatBackend, text: str) -> list[ModelEvent]:
    return [e async for e in backend.stream([{"role": "user", "content": text}], [])]


async def test_streams_reasoning_text_and_usage(stub: OpenAIStub) -> None:
    stub.script("hello-1", Step(reasoning=["hm", "m"], content=["Hel", "lo"], usage=(12, 3)))
    backend = OpenAIChatBackend(base_url=stub.base_url, model="m", api_key="k")
    events = await collect(backend, "hello-1")
    await backend.aclose()
    assert events == [
        ReasoningDelta("hm"),
        ReasoningDelta("m"),
        TextDelta("Hel"),
        TextDelta("lo"),
        Finish("stop", events[-1].usage),  # type: ignore[union-attr]
    ]
    last = events[-1]
    assert isinstance(last, Finish) and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 3)
    assert stub.requests[-1]["stream"] is True
    assert stub.requests[-1]["stream_options"] == {"include_usage": True}


async def test_extra_body_and_no_stream_usage(stub: OpenAIStub) -> None:
    stub.script("extra-1", Step(content=["ok"], usage=None))
    backend = OpenAIChatBackend(
        base_url=stub.base_url,
        model="m",
        stream_usage=False,
        extra_body={"reasoning_effort": "low", "stream": False},
    )
    events = await collect(backend, "extra-1")
    await backend.aclose()
    sent = stub.requests[-1]
    assert sent["reasoning_effort"] == "low" and sent["stream"] is True
    assert "stream_options" not in sent
    assert events[-1] == Finish("stop", None)


async def test_assembles_parallel_tool_call_deltas(stub: OpenAIStub) -> None:
    stub.script(
        "tools-1",
        Step(
            content=["Looking."],
            tool_calls=[
                ("call_1", "web_search", '{"query": "ai news"}'),
                ("call_2", "calculator", '{"expression": "2+2"}'),
            ],
        ),
    )
    backend = OpenAIChatBackend(base_url=stub.base_url, model="m")
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {}}}]
    events = [e async for e in backend.stream([{"role": "user", "content": "tools-1"}], tools)]
    await backend.aclose()
    calls = next(e for e in events if isinstance(e, ToolCalls)).calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_1", "web_search", '{"query": "ai news"}'),
        ("call_2", "calculator", '{"expression": "2+2"}'),
    ]
    assert isinstance(events[-1], Finish) and events[-1].finish_reason == "tool_calls"
    assert stub.requests[-1]["tools"] == tools


async def test_http_error_is_a_backend_error(stub: OpenAIStub) -> None:
    stub.script("boom-1", Step(status=500))
    backend = OpenAIChatBackend(base_url=stub.base_url, model="m")
    with pytest.raises(BackendError, match="HTTP 500"):
        await collect(backend, "boom-1")
    await backend.aclose()


async def test_unreachable_backend_is_a_backend_error() -> None:
    from parley_devstack.servers import free_port

    backend = OpenAIChatBackend(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m")
    with pytest.raises(BackendError, match="unreachable"):
        await collect(backend, "x")
    await backend.aclose()


def _sse_backend(body: str, status: int = 200) -> OpenAIChatBackend:
    """A backend on a canned HTTP response (narrow parser test, no server)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body, headers={"content-type": "text/event-stream"})

    return OpenAIChatBackend(
        base_url="http://backend/v1",
        model="m",
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


async def test_sse_parser_comments_multiline_and_missing_done() -> None:
    body = (
        ": keep-alive comment\n\n"
        'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
        'data: {"choices": [{"delta":\n'
        'data: {"content": "b"}}]}\n\n'
        'data: {"choices": [{"delta": {"reasoning": "r"}, "finish_reason": "length"}]}\n\n'
    )
    events = await collect(_sse_backend(body), "x")
    assert events == [TextDelta("a"), TextDelta("b"), ReasoningDelta("r"), Finish("length", None)]


async def test_error_chunk_and_bad_json_are_backend_errors() -> None:
    with pytest.raises(BackendError, match="overloaded"):
        await collect(_sse_backend('data: {"error": {"message": "overloaded"}}\n\n'), "x")
    with pytest.raises(BackendError, match="invalid JSON"):
        await collect(_sse_backend("data: {nope\n\n"), "x")
