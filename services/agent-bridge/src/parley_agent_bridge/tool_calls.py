"""``tool:call`` on the agent bridge: a service or an agent runs an agent's MCP tool
(request/reply on the command's subject, relayed by gateways, and ``subjects.AGENT_TOOL_CALL``,
queue group ``subjects.QUEUE_AGENT_BRIDGE``), bounded per replica; and the toolbox a turn
uses, counted in the metrics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from parley_agent_bridge.bridge_state import BridgeState
from parley_agent_bridge.config import DEMO_AGENT_ID
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.tools import McpToolbox, ToolOutcome
from parley_contract import envelopes, jsonutil
from parley_contract.commands import ToolCallCommand
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.routes import ROUTES


class MeteredTools:
    """An agent's toolbox, counting calls in the metrics."""

    def __init__(self, box: McpToolbox, metrics: Metrics) -> None:
        self.box = box
        self.metrics = metrics

    def specs(self) -> list[dict[str, Any]]:
        return self.box.specs()

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        out = await self.box.call(name, arguments)
        self.metrics.tool_calls.labels(name, str(out.success).lower()).inc()
        return out


# tool:call requests answered at once per replica; more get SERVICE_UNAVAILABLE (retry).
MAX_TOOL_CALLS_IN_FLIGHT = 200


def tool_agent(principal: Principal, requested: str | None) -> str:
    """Whose tools a tool:call runs (docs/security.md): an agent its own only (naming
    another is FORBIDDEN); a service any agent's (the demo agent's when it names none);
    nobody else (users ask an agent in a conversation instead)."""
    if principal.kind is PrincipalKind.AGENT:
        if requested not in (None, principal.id):
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                "an agent may call only its own tools",
                {"field": "agentId"},
            )
        return principal.id
    if principal.kind is PrincipalKind.SERVICE:
        return requested or DEMO_AGENT_ID
    raise ParleyError(ErrorCode.FORBIDDEN, "only agents and services may call tools")


class ToolCalls(BridgeState):
    """Answers ``tool:call`` requests."""

    async def _on_tool_call(self, msg: Msg) -> None:
        # The subscription hands messages over one at a time: each call runs in a task of
        # its own, so one slow tool never holds up the other callers (bounded per replica).
        if len(self._tool_tasks) >= MAX_TOOL_CALLS_IN_FLIGHT:
            busy = envelopes.fail(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"{MAX_TOOL_CALLS_IN_FLIGHT} tool calls are running on this bridge, retry",
            )
            if msg.reply:
                await msg.respond(jsonutil.dumps(busy))
            return
        task = asyncio.create_task(self._answer_tool_call(msg), name="tool:call")
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _answer_tool_call(self, msg: Msg) -> None:
        try:
            reply = await self._tool_call(msg.data)
        except ParleyError as exc:
            reply = envelopes.fail_from(exc)
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(jsonutil.dumps(reply))

    async def _tool_call(self, raw: bytes) -> dict[str, Any]:
        req = ROUTES[Event.TOOL_CALL].decode(raw)  # principal and payload in one pass
        cmd = req.data
        assert isinstance(cmd, ToolCallCommand)
        agent_id = tool_agent(req.principal, cmd.agent_id)
        box = self.toolboxes.get(agent_id)
        if box is None or not box.has_tool(cmd.tool_name):
            raise ParleyError(
                ErrorCode.NOT_FOUND,
                f"agent {agent_id} has no tool {cmd.tool_name}",
                {"field": "toolName"},
            )
        out = await box.call(cmd.tool_name, cmd.arguments)
        self.metrics.tool_calls.labels(cmd.tool_name, str(out.success).lower()).inc()
        return envelopes.ok(
            {
                "toolName": cmd.tool_name,
                "result": out.result,
                "success": out.success,
                "error": out.error,
                "executionTime": out.execution_time_ms,
            }
        )
