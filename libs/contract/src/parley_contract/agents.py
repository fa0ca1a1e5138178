"""Which agents Parley can reach right now (issue 13: agents are known).

Agent bridges publish each agent they serve in the JetStream KV bucket
``subjects.KV_AGENTS``, key ``<agentId>.<bridgeInstanceId>``, value
:class:`~parley_contract.agent_events.AgentAvailability` JSON, refreshed every TTL/3 and gone
by itself (bucket TTL) when the bridge stops refreshing. External agents are reachable while
connected to a gateway: their presence key ``agent.<agentId>.<gatewayInstanceId>`` in
``subjects.KV_PRESENCE``.

Read by the gateway (``GET /v1/agents``) and by the conversation service (an ``agentId``
nobody serves is ``NOT_FOUND``; a user message to an agent that went away gets a visible
notice).
"""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors

from parley_contract import jsonutil, kvread, subjects
from parley_contract.events import PrincipalKind
from parley_contract.kvread import LiveEntry

# A KV read answers within this long or counts as "unknown" (the callers then decide).
LOOKUP_TIMEOUT_SECONDS = 2.0


async def _entries(js: Any, bucket: str, pattern: str = ">", **kw: Any) -> list[LiveEntry]:
    """``kvread.live_entries``, but a bucket that does not exist (yet: no bridge has started,
    no gateway) has none."""
    try:
        return await kvread.live_entries(js, bucket, pattern, **kw)
    except nats.js.errors.NotFoundError:
        return []


async def _any_key(js: Any, bucket: str, pattern: str) -> bool:
    """Whether a live key of ``bucket`` matches ``pattern``."""
    return bool(await _entries(js, bucket, pattern, values=False, limit=1))


def _served_record(agent_id: str, values: list[dict[str, Any]]) -> dict[str, Any]:
    first = values[0]
    models: list[str] = []
    for v in values:
        for m in v.get("models") or ([v["model"]] if v.get("model") else []):
            if isinstance(m, str) and m not in models:
                models.append(m)
    return {
        "id": agent_id,
        "name": first.get("name") or agent_id,
        "description": first.get("description") or "",
        "models": models,
        "online": True,
        "servedBy": "bridge",
        "instances": len(values),
    }


class AgentDirectory:
    """Reads the agents bucket and the presence bucket; a short cache for the hot path."""

    def __init__(self, js: Any, *, cache_seconds: float = 1.0) -> None:
        self.js = js
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, bool]] = {}

    async def is_served(self, agent_id: str, *, cached: bool = False) -> bool:
        """Whether an agent bridge serves ``agent_id`` or it is connected as an agent now.

        ``cached``: an answer up to ``cache_seconds`` old will do (per user message).
        """
        now = time.monotonic()
        hit = self._cache.get(agent_id)
        if cached and hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        served = await _any_key(self.js, subjects.KV_AGENTS, f"{agent_id}.*")
        if not served:
            served = await _any_key(
                self.js, subjects.KV_PRESENCE, f"{PrincipalKind.AGENT.value}.{agent_id}.*"
            )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[agent_id] = (now, served)
        return served

    async def list(self) -> list[dict[str, Any]]:
        """Every reachable agent: ``{id, name, description, models, online, servedBy,
        instances}``, bridge-served ones first, each sorted by id."""
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for entry in await _entries(self.js, subjects.KV_AGENTS):
            agent_id = entry.key.rsplit(".", 1)[0]
            try:
                value = jsonutil.loads(entry.value)
            except ValueError:
                continue
            if isinstance(value, dict):
                by_agent.setdefault(agent_id, []).append(value)
        out = [_served_record(a, vs) for a, vs in sorted(by_agent.items())]
        external: dict[str, int] = {}
        for entry in await _entries(
            self.js, subjects.KV_PRESENCE, f"{PrincipalKind.AGENT.value}.>", values=False
        ):
            kind, _, rest = entry.key.partition(".")
            if kind != PrincipalKind.AGENT.value:
                continue
            agent_id = rest.rsplit(".", 1)[0]
            if agent_id and agent_id not in by_agent:
                external[agent_id] = external.get(agent_id, 0) + 1
        out += [
            {
                "id": a,
                "name": a,
                "description": "",
                "models": [],
                "online": True,
                "servedBy": "connection",
                "instances": n,
            }
            for a, n in sorted(external.items())
        ]
        return out
