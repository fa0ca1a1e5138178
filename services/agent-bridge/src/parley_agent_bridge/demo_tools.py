"""The bundled offline MCP tool server (official ``mcp`` SDK, ``MCPServer``).

Tools: ``web_search`` (canned offline results), ``calculator`` (safe arithmetic),
``rate_limited_api`` (always fails, to show a failed tool_result) and ``sleep`` (waits, to
show timeouts and ``message:stop``).

Run: ``python -m parley_agent_bridge.demo_tools`` (stdio) or
``python -m parley_agent_bridge.demo_tools --http 8765`` (streamable HTTP at ``/mcp``).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import logging
import operator
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

logger = logging.getLogger(__name__)

server = MCPServer("parley-demo-tools", instructions="Offline demo tools for Parley.")

ARTICLES = [
    {
        "title": "OpenAI Releases GPT-5",
        "url": "https://example.com/gpt5",
        "summary": "OpenAI announced a new flagship model.",
    },
    {
        "title": "Google's Gemini 2.0 Update",
        "url": "https://example.com/gemini",
        "summary": "Google unveiled major improvements to Gemini.",
    },
    {
        "title": "Meta AI Research Breakthrough",
        "url": "https://example.com/meta-ai",
        "summary": "Meta's AI team published new research.",
    },
    {
        "title": "Open-Source Models Close the Gap",
        "url": "https://example.com/open-models",
        "summary": "Community models rival proprietary ones on benchmarks.",
    },
]


@server.tool()
def web_search(query: str, limit: int = 3) -> dict[str, Any]:
    """Search the web (offline demo: canned articles, no network)."""
    limit = max(1, min(int(limit), len(ARTICLES)))
    return {"query": query, "articles": ARTICLES[:limit]}


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate(expression: str) -> float | int:
    """Arithmetic only (numbers, + - * / // % **, parentheses): no names, no calls."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {ast.dump(node)[:60]}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    value = ev(tree)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    assert isinstance(value, int | float)
    return value


@server.tool()
def calculator(expression: str) -> dict[str, Any]:
    """Evaluate an arithmetic expression such as ``(2 + 3) * 7``."""
    try:
        return {"expression": expression, "result": evaluate(expression)}
    except (ValueError, ArithmeticError) as exc:
        raise ToolError(str(exc)) from None


@server.tool()
def rate_limited_api(query: str = "") -> dict[str, Any]:
    """A tool that always fails (demo of a failed tool call)."""
    raise ToolError("API rate limit exceeded. Please try again in 60 seconds.")


@server.tool()
async def sleep(seconds: float = 1.0) -> dict[str, Any]:
    """Wait, then answer (demo of slow tools, timeouts and message:stop)."""
    seconds = max(0.0, min(float(seconds), 600.0))
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, default=None, help="serve streamable HTTP on PORT")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.http is not None:
        server.run("streamable-http", host=args.host, port=args.http)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
