"""The HTTP side of the agent bridge: /healthz, /readyz, /metrics; the bridge in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley_agent_bridge.config import Settings, load_agents
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.service import Bridge
from parley_runtime.runner import started_in_background


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    agents = load_agents(settings)  # a bad agents file fails at startup, loudly
    metrics = Metrics()
    bridge = Bridge(settings, agents, metrics, demo_delay=settings.demo_delay_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # /readyz is 503 until the bridge has NATS, its stream and buckets (it waits for
        # them through an outage: parley_runtime.runner.started_in_background).
        async with started_in_background(bridge.start, bridge.stop):
            yield

    app = FastAPI(title="Parley agent bridge", lifespan=lifespan)
    app.state.bridge = bridge

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        nc = bridge.nc
        ok = bridge.ready and nc is not None and nc.is_connected
        if not ok:
            response.status_code = 503
        return {"ready": ok, "instanceId": bridge.instance_id, "agents": sorted(bridge.agents)}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
