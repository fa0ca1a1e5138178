"""Which browser origins may use a gateway: one rule for WebSocket upgrades and CORS.

A browser sends ``Origin`` with every WebSocket handshake and with cross-origin HTTP
requests; a page on another site holding a token (or tricking a user into one) must not be
able to open a socket with it. Non-browser clients send no ``Origin``: allowed (they are
not protected by origins anyway; their token is their credential).

Allowed, in this order:

1. the gateway's own origin: the ``Origin``'s host (and port) equals the request's
   ``Host`` header — the web UI served by any gateway, behind any proxy that keeps ``Host``;
2. every origin listed in ``PARLEY_GATEWAY_ALLOWED_ORIGINS`` (comma-separated
   ``scheme://host[:port]``; ``*`` allows any origin);
3. in development (``PARLEY_ENVIRONMENT=development``) only: ``http(s)://localhost``,
   ``127.0.0.1`` and ``[::1]`` on any port (the Vite dev server, local tools).

Anything else — including the opaque origin ``null`` (sandboxed frames, ``file:``) and a
request with two ``Origin`` headers — is refused with 403 and the ``FORBIDDEN`` envelope:
WebSocket upgrades (``/ws``, ``/socket.io/``) and every HTTP request (a cross-site "simple"
POST, e.g. socket.io polling, would otherwise act before CORS hides its answer). Allowed
cross-origin HTTP requests get CORS answers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from parley_contract import envelopes
from parley_contract.errors import ErrorCode

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _split(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port or None for the scheme's default) of an origin, or None."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return scheme, host, port


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without the default port, or None."""
    split = _split(origin)
    if split is None:
        return None
    scheme, host, port = split
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}" + (f":{port}" if port is not None else "")


def _host_of(host_header: str) -> tuple[str, int | None] | None:
    split = _split(f"http://{host_header.strip()}")
    return None if split is None else (split[1], split[2])


class OriginPolicy:
    """The allow-list of one gateway (see the module docstring)."""

    def __init__(self, allowed: str, *, development: bool) -> None:
        entries = [x.strip() for x in allowed.split(",") if x.strip()]
        self.any = "*" in entries
        self.listed: frozenset[str] = frozenset(
            n for n in (normalize(x) for x in entries if x != "*") if n is not None
        )
        self.development = development

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        """Whether a request with this ``Origin`` (None: no header) may go on."""
        if origin is None:
            return True  # not a browser
        if self.any:
            return True
        split = _split(origin)
        if split is None:
            return False  # "null", garbage
        _, o_host, o_port = split
        if host is not None:
            own = _host_of(host)
            # Same host and port; Host carries no scheme, so the port decides (a default
            # port is left out of both).
            if own is not None and own == (o_host, o_port):
                return True
        if normalize(origin) in self.listed:
            return True
        return self.development and o_host in _LOCAL_HOSTS

    def allows_all(self, origins: list[str], hosts: list[str]) -> bool:
        """A request's ``Origin`` and ``Host`` header values: at most one ``Origin``, allowed."""
        if len(origins) > 1:
            return False
        return self.allows(origins[0] if origins else None, hosts[0] if len(hosts) == 1 else None)


def origin_refusal(origins: list[str]) -> dict[str, Any]:
    """The error envelope of a refused origin."""
    return envelopes.fail(
        ErrorCode.FORBIDDEN,
        "origin not allowed (PARLEY_GATEWAY_ALLOWED_ORIGINS)",
        {"origin": origins[0][:200] if origins else None},
    )


class PolicyCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware deciding origins with the gateway's :class:`OriginPolicy`.

    Cross-origin callers authenticate with ``Authorization: Bearer`` (no cookies), so
    credentials are not allowed and any method and header may be asked for: the origin is
    the gate. Same-origin requests need no CORS at all.
    """

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        super().__init__(
            app,
            allow_origins=[],
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=False,
            expose_headers=["Retry-After"],
            max_age=600,
        )
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origins = headers.getlist("origin")
            if not self.policy.allows_all(origins, headers.getlist("host")):
                response = JSONResponse(origin_refusal(origins), status_code=403)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def is_allowed_origin(self, origin: str) -> bool:
        return self.policy.allows(origin)
