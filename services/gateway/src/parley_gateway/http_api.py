"""The HTTP surface of docs/protocol.md section 7: a FastAPI app behind the public port (front.py).

Every method and request bodies reach it (uvicorn's h11 protocol), keep-alive included.
Errors always come as the protocol's envelope: unknown paths 404, a method a path does not
take 405 (with ``Allow``), bodies over ``PARLEY_GATEWAY_MAX_BODY_BYTES`` 413 (a route that
takes more, e.g. uploads, sets its own ``max_body_size=``), anything unexpected 500.
Cross-cutting HTTP policy (CORS/Origin) goes in as middleware in :func:`create_app`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from parley_contract import asyncapi, envelopes, subjects
from parley_contract.auth import mint_token
from parley_contract.envelopes import ErrorEnvelope, SuccessEnvelope
from parley_contract.errors import HTTP_STATUS, ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.ids import check_id
from parley_contract.internal import Principal
from parley_contract.limits import INT64_MAX
from parley_contract.routes import QUERY_ROUTE, ROUTES
from parley_gateway.files_http import add_routes
from parley_gateway.http_auth import Auth
from parley_gateway.http_auth import principal_of as bearer_principal
from parley_gateway.hub import Hub

logger = logging.getLogger(__name__)
FAVICON = Path(__file__).with_name("favicon.ico")

DEV_TOKEN_TTL_SECONDS = 12 * 3600

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (401, 403, 404, 422, 503, 504)
}


_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.VALIDATION_ERROR,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
}

# Integers in the query; an empty value (``?limit=``) means "not given".
IntParam = Annotated[str | None, Query(description="integer; empty = not given")]


def _int(name: str, raw: str | None, low: int, high: int = INT64_MAX) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, f"{name} must be an integer", {"field": name}
        ) from None
    if value < low or value > high:
        bounds = f"between {low} and {high}"
        raise ParleyError(ErrorCode.VALIDATION_ERROR, f"{name} must be {bounds}", {"field": name})
    return value


class DevTokenRequest(BaseModel):
    """Body of ``POST /v1/dev/token`` (the same fields as the GET's query)."""

    model_config = ConfigDict(extra="forbid")
    sub: str | None = Field(default=None, description="principal id")
    kind: str | None = Field(default=None, description="user | agent")
    name: str | None = Field(default=None, max_length=100)


def _envelope_response(envelope: dict[str, Any]) -> Response:
    if envelope.get("success"):
        return JSONResponse(envelope)
    code = (envelope.get("error") or {}).get("code", ErrorCode.INTERNAL_ERROR.value)
    try:
        status = HTTP_STATUS[ErrorCode(code)]
    except ValueError:
        status = 500
    return JSONResponse(envelope, status_code=status)


@functools.cache
def _client_asyncapi() -> bytes:
    """Generated from the contract at the first request (~0.1 s), not at every start."""
    return asyncapi.render_client()


def create_app(hub: Hub) -> FastAPI:
    settings = hub.settings
    jwt_cfg = settings.jwt_config()
    # /docs works offline: FastAPIOffline serves Swagger UI 5 and ReDoc from its own package
    # (under /static-offline-docs) instead of FastAPI's CDN links.
    app = FastAPIOffline(
        favicon_url="/favicon.ico",
        # No validator badge (it would load an image from the validator's host).
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        title="Parley gateway",
        version="1",
        description=(
            "HTTP side of the Parley gateway (docs/protocol.md section 7). The WebSocket "
            "protocol is served at `/ws` on the same port; see docs/protocol.md."
        ),
        max_body_size=settings.max_body_bytes,
    )
    # Middleware (CORS/Origin checks...) is added here: app.add_middleware(...).

    @app.exception_handler(ParleyError)
    async def _parley_error(_: Request, exc: ParleyError) -> Response:
        return JSONResponse(envelopes.fail_from(exc), status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        if exc.status_code >= 500:
            code = ErrorCode.INTERNAL_ERROR
        message = exc.detail if isinstance(exc.detail, str) else code.value
        details: dict[str, Any] | None = None
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} not allowed here (allowed: {allow or 'none'})"
            details = {"allow": [m.strip() for m in allow.split(",") if m.strip()]}
        elif exc.status_code == 413:
            limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY, settings.max_body_bytes)
            message = f"request body larger than {limit} bytes"
            details = {"limit": limit}
        return JSONResponse(
            envelopes.fail(code, message, details), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> Response:
        logger.error("HTTP request failed", exc_info=exc)
        return JSONResponse(
            envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error"), status_code=500
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        env = envelopes.fail(
            ErrorCode.VALIDATION_ERROR,
            f"{field}: {first.get('msg', 'invalid value')}" if field else "invalid request",
            {"field": field} if field else None,
        )
        return JSONResponse(env, status_code=422)

    async def principal_of(authorization: HTTPAuthorizationCredentials | None) -> Principal:
        return await bearer_principal(authorization, jwt_cfg)

    async def query(
        subject: str, principal: Principal, data: dict[str, Any], fallback: str | None = None
    ) -> Response:
        # An empty query parameter (``?status=``) means "not given".
        given = {k: v for k, v in data.items() if v is not None and v != ""}
        body = hub.command_body(principal, given)
        return _envelope_response(await hub.request(subject, body, fallback=fallback))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "instanceId": hub.instance_id}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorEnvelope}})
    async def readyz() -> Response:
        if hub.ready:
            return JSONResponse({"status": "ready", "instanceId": hub.instance_id})
        reason = "draining" if hub.draining else "not connected to NATS"
        return JSONResponse(envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, reason), status_code=503)

    @app.api_route(
        "/ws",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        include_in_schema=False,
    )
    async def ws_without_upgrade() -> Response:
        return JSONResponse(
            envelopes.fail(ErrorCode.VALIDATION_ERROR, "/ws needs a WebSocket upgrade"),
            status_code=426,
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        hub.metrics.sync()
        return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/scaling", tags=["v1"], response_model=SuccessEnvelope, responses=_ERRORS)
    async def scaling(authorization: Auth = None) -> Response:
        await principal_of(authorization)
        if not hub.ready and hub.kv_presence is None:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "not connected to NATS")
        return JSONResponse(envelopes.ok(await hub.scaling()))

    @app.get("/v1/agents", tags=["v1"], response_model=SuccessEnvelope, responses=_ERRORS)
    async def list_agents(authorization: Auth = None) -> Response:
        """The agents Parley can reach now: served by an agent bridge (KV, TTL heartbeat) or
        connected as an agent. ``items``: ``{id, name, description, models, online,
        servedBy: "bridge" | "connection", instances}``."""
        await principal_of(authorization)
        if hub.nc is None or not hub.nc.is_connected:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "not connected to NATS")
        return JSONResponse(envelopes.ok({"items": await hub.agents.list()}))

    @app.get("/v1/conversations", tags=["v1"], response_model=SuccessEnvelope, responses=_ERRORS)
    async def list_conversations(
        authorization: Auth = None,
        status: Annotated[str | None, Query(max_length=20)] = None,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
        limit: IntParam = None,
    ) -> Response:
        principal = await principal_of(authorization)
        data = {"status": status, "cursor": cursor, "limit": _int("limit", limit, 1, 200)}
        return await query(subjects.QUERY_CONVERSATIONS_LIST, principal, data)

    @app.get(
        "/v1/conversations/{conversation_id}",
        tags=["v1"],
        response_model=SuccessEnvelope,
        responses=_ERRORS,
    )
    async def get_conversation(conversation_id: str, authorization: Auth = None) -> Response:
        principal = await principal_of(authorization)
        check_id(conversation_id, "conversationId")
        data = {"conversationId": conversation_id}
        # To the conversation's owner, whose totals are read-your-writes (docs/affinity.md);
        # with none right now, to any replica.
        route = QUERY_ROUTE[subjects.QUERY_CONVERSATION_GET]
        return await query(route.subject_for(data), principal, data, fallback=route.subject)

    @app.delete(
        "/v1/conversations/{conversation_id}",
        tags=["v1"],
        response_model=SuccessEnvelope,
        responses=_ERRORS,
    )
    async def delete_conversation(conversation_id: str, authorization: Auth = None) -> Response:
        """conversation:delete over HTTP: soft-delete (the creator only), the durable
        conversation:deleted to its members; the deleted Conversation."""
        principal = await principal_of(authorization)
        check_id(conversation_id, "conversationId")
        route = ROUTES[Event.CONVERSATION_DELETE]
        if not route.may_send(principal.kind):
            raise ParleyError(ErrorCode.FORBIDDEN, f"a {principal.kind.value} may not delete")
        data = {"conversationId": conversation_id}
        # To the conversation's owner (docs/affinity.md); with none right now, to any replica.
        return await query(route.subject_for(data), principal, data, fallback=route.subject)

    @app.get(
        "/v1/conversations/{conversation_id}/messages",
        tags=["v1"],
        response_model=SuccessEnvelope,
        responses=_ERRORS,
    )
    async def list_messages(
        conversation_id: str,
        authorization: Auth = None,
        after_seq: Annotated[
            str | None, Query(alias="afterSeq", description="integer >= 0")
        ] = None,
        before_seq: Annotated[
            str | None, Query(alias="beforeSeq", description="integer >= 1")
        ] = None,
        limit: IntParam = None,
    ) -> Response:
        principal = await principal_of(authorization)
        check_id(conversation_id, "conversationId")
        data = {
            "conversationId": conversation_id,
            "afterSeq": _int("afterSeq", after_seq, 0),
            "beforeSeq": _int("beforeSeq", before_seq, 1),
            "limit": _int("limit", limit, 1, 500),
        }
        route = QUERY_ROUTE[subjects.QUERY_MESSAGES_LIST]  # the owner, as get_conversation
        return await query(route.subject_for(data), principal, data, fallback=route.subject)

    @app.get("/v1/search", tags=["v1"], response_model=SuccessEnvelope, responses=_ERRORS)
    async def search(
        authorization: Auth = None,
        q: Annotated[str | None, Query(max_length=2000, description="1-200 characters")] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: IntParam = None,
    ) -> Response:
        """Titles and message text of the caller's own conversations, newest first:
        ``{items: [{kind: "conversation" | "message", conversationId, title, createdAt |
        message: {_id, seq, role, messageType, name, createdAt, snippet}}], nextCursor, mode}``
        (docs/protocol.md, section 7)."""
        principal = await principal_of(authorization)
        if q is None:
            raise ParleyError(ErrorCode.VALIDATION_ERROR, "q: required", {"field": "q"})
        data = {"q": q, "cursor": cursor, "limit": _int("limit", limit, 1, 50)}
        return await query(subjects.QUERY_SEARCH, principal, data)

    dev_tokens = settings.environment == "development" and settings.jwt_algorithm == "HS256"

    @app.get(
        "/v1/dev/token",
        tags=["dev"],
        response_model=SuccessEnvelope,
        responses=_ERRORS,
        include_in_schema=dev_tokens,
    )
    async def dev_token(
        sub: Annotated[str | None, Query(description="principal id")] = None,
        kind: Annotated[str | None, Query(description="user | agent")] = None,
        name: Annotated[str | None, Query(max_length=100)] = None,
    ) -> Response:
        """A short-lived token signed with this gateway's HS256 secret (development only)."""
        return mint_dev_token(sub, kind, name)

    @app.post(
        "/v1/dev/token",
        tags=["dev"],
        response_model=SuccessEnvelope,
        responses=_ERRORS,
        include_in_schema=dev_tokens,
    )
    async def dev_token_post(body: Annotated[DevTokenRequest, Body()]) -> Response:
        """The same as the GET, the fields in a JSON body."""
        return mint_dev_token(body.sub, body.kind, body.name)

    def mint_dev_token(sub: str | None, kind: str | None, name: str | None) -> Response:
        if not dev_tokens:
            raise ParleyError(ErrorCode.NOT_FOUND, "Not Found")
        principal_id = check_id(sub, "sub")
        kind = kind or PrincipalKind.USER.value
        if kind not in (PrincipalKind.USER.value, PrincipalKind.AGENT.value):
            raise ParleyError(
                ErrorCode.VALIDATION_ERROR, "kind must be 'user' or 'agent'", {"field": "kind"}
            )
        assert settings.jwt_secret is not None
        tok = mint_token(
            principal_id,
            PrincipalKind(kind),
            name=name or None,
            ttl_seconds=DEV_TOKEN_TTL_SECONDS,
            secret=settings.jwt_secret,
        )
        return JSONResponse(envelopes.ok({"token": tok}))

    @app.get("/asyncapi.json", tags=["docs"], response_class=Response)
    async def asyncapi_json() -> Response:
        """The client WebSocket API (`/ws`) as an AsyncAPI 3.0 document."""
        return Response(_client_asyncapi(), media_type="application/json")

    # Uploads and downloads (files_http.py); closed by the gateway on its way out.
    app.state.attachments = add_routes(app, hub)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """Parley's icon, whether or not the web UI is built (browsers ask every origin)."""
        return Response(
            FAVICON.read_bytes(),
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    if settings.web_dist and Path(settings.web_dist).is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dist, html=True), name="web")
        logger.info("serving the web UI from %s", settings.web_dist)
    elif settings.web_dist:
        logger.warning(
            "PARLEY_GATEWAY_WEB_DIST=%s is not a directory: no web UI", settings.web_dist
        )

    return app
