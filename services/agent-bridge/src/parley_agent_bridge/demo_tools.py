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
import logging
import math
import operator
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
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


# The calculator's bounds (docs/security.md): every value, intermediate ones included, is an
# integer of at most MAX_INT_BITS bits or a finite float, checked BEFORE each operation is
# computed (a ** b and a * b by the size of their result), so one expression costs
# microseconds and bytes whatever it is. A result is what a message can carry: an integer
# within signed 64-bit, else a float (finite), else refused.
MAX_EXPRESSION_CHARS = 200
# The server's own limit per call, whatever the client's timeout (a client that went away
# cancels nothing): an async tool is cancelled there.
TOOL_DEADLINE_SECONDS = 60.0
MAX_INT_BITS = 1100  # a little over the largest float (2**1024): exact until converted
MAX_EXPONENT = 1000
INT64_MAX = 2**63 - 1


def _deadline_message() -> str:
    return f"stopped at the tool server's limit of {TOOL_DEADLINE_SECONDS:g} s per call"


def _too_large() -> ValueError:
    return ValueError(f"result too large (the calculator's limit is {MAX_INT_BITS} bits)")


def _check_before(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed the bounds, without computing it."""
    ints = isinstance(left, int) and isinstance(right, int)
    trivial_base = isinstance(left, int) and abs(left) <= 1  # 0, 1, -1: any exponent is cheap
    if isinstance(op, ast.Pow):
        if isinstance(right, int) and abs(right) > MAX_EXPONENT and not trivial_base:
            raise ValueError(f"exponent too large (limit {MAX_EXPONENT})")
        # |a| >= 2**(bits-1), so a ** b has at least (bits - 1) * b bits.
        if ints and right > 0 and (left.bit_length() - 1) * right > MAX_INT_BITS:
            raise _too_large()
    elif (
        isinstance(op, ast.Mult)
        and ints
        and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
    ):
        raise _too_large()


def _check_value(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _too_large()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is too large for a float")
    return value


def evaluate(expression: str) -> float | int:
    """Arithmetic only (numbers, + - * / // % **, parentheses): no names, no calls; bounded
    in time and memory (MAX_INT_BITS, MAX_EXPONENT, MAX_EXPRESSION_CHARS)."""

    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return _check_value(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            _check_before(node.op, left, right)
            return _check_value(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _check_value(_UNARY[type(node.op)](ev(node.operand)))
        raise ValueError(f"unsupported expression: {ast.dump(node)[:60]}")

    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression too long (limit {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError):  # e.g. a literal past int's digit limit
        raise ValueError("not an arithmetic expression") from None
    value = ev(tree)
    if isinstance(value, float) and value.is_integer() and abs(value) <= INT64_MAX:
        return int(value)
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return _check_value(float(value))  # a message carries 64-bit integers at most
    return value


@server.tool()
async def calculator(expression: str) -> dict[str, Any]:
    """Evaluate an arithmetic expression such as ``(2 + 3) * 7``."""
    try:
        # Bounded work, in a worker thread: the event loop keeps serving other calls.
        with anyio.fail_after(TOOL_DEADLINE_SECONDS):
            value = await anyio.to_thread.run_sync(evaluate, expression, abandon_on_cancel=True)
    except (ValueError, ArithmeticError) as exc:
        raise ToolError(str(exc)) from None
    except TimeoutError:
        raise ToolError(_deadline_message()) from None
    return {"expression": expression, "result": value}


@server.tool()
def rate_limited_api(query: str = "") -> dict[str, Any]:
    """A tool that always fails (demo of a failed tool call)."""
    raise ToolError("API rate limit exceeded. Please try again in 60 seconds.")


@server.tool()
async def sleep(seconds: float = 1.0) -> dict[str, Any]:
    """Wait, then answer (demo of slow tools, timeouts and message:stop)."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ToolError("seconds must be a finite number >= 0")
    try:
        with anyio.fail_after(TOOL_DEADLINE_SECONDS):
            await anyio.sleep(seconds)
    except TimeoutError:
        raise ToolError(_deadline_message()) from None
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
