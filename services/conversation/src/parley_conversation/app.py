"""HTTP side of a replica: /healthz, /readyz, /metrics (the work itself is on NATS)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley_conversation import asyncapi
from parley_conversation.service import ConversationService
from parley_conversation.settings import Settings
from parley_runtime.runner import started_in_background

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = ConversationService(settings)

    async def stop() -> None:
        logger.info("draining")
        await service.stop()
        logger.info("stopped")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # /readyz is 503 until the replica has its store, NATS and JetStream assets (it
        # waits for them through an outage: parley_runtime.runner.started_in_background).
        async with started_in_background(service.start, stop):
            yield

    app = FastAPI(title="Parley conversation service", lifespan=lifespan)
    app.state.service = service

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "instanceId": settings.instance_id}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        ready = await service.check_ready()
        if not ready:
            response.status_code = 503
        return {"ready": ready, "instanceId": settings.instance_id}

    @app.get("/asyncapi.json")
    async def asyncapi_json() -> dict[str, Any]:
        return asyncapi.build()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
