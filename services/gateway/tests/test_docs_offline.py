"""/docs works without the internet (Swagger UI from a package) and shows the bearer scheme."""

from __future__ import annotations

import re

import httpx

from parley_contract import asyncapi
from parley_gateway.http_api import create_app
from parley_gateway.hub import Hub
from parley_gateway.metrics import Metrics
from parley_gateway.settings import Settings

# Every URL a page can make the browser fetch: src/href attributes, Swagger UI's url option.
_URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


def _client() -> httpx.AsyncClient:
    app = create_app(Hub(Settings(environment="development", web_dist=None), Metrics()))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_docs_page_references_no_external_host() -> None:
    async with _client() as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert "SwaggerUIBundle" in html
        urls = [a or b for a, b in _URLS.findall(html)]
        assert any(u.endswith("swagger-ui-bundle.js") for u in urls), urls
        assert any(u.endswith(".css") for u in urls), urls
        for url in urls:
            # Same origin only: a path, never a scheme or a protocol-relative //host.
            assert url.startswith("/") and not url.startswith("//"), url
            got = await http.get(url)
            assert got.status_code == 200, (url, got.status_code)
            assert got.content, url
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html), html
        redoc = await http.get("/redoc")
        assert redoc.status_code == 200
        assert "fonts.googleapis" not in redoc.text
        assert not re.search(r"(?i)(?:src|href)=\"(?:https?:)?//", redoc.text), redoc.text


async def test_openapi_declares_the_bearer_scheme_on_authenticated_routes() -> None:
    async with _client() as http:
        doc = (await http.get("/openapi.json")).json()
        schemes = doc["components"]["securitySchemes"]
        ((name, scheme),) = schemes.items()
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        assert scheme["bearerFormat"] == "JWT"
        for path, method in (
            ("/v1/conversations", "get"),
            ("/v1/agents", "get"),
            ("/v1/conversations/{conversation_id}", "get"),
            ("/v1/conversations/{conversation_id}/attachments", "post"),
            ("/v1/attachments/{attachment_id}", "get"),
        ):
            op = doc["paths"][path][method]
            assert op["security"] == [{name: []}], path
            # The header is the scheme now, not a free-form parameter to fill in.
            names = {p["name"].lower() for p in op.get("parameters", [])}
            assert "authorization" not in names, path
        assert "security" not in doc["paths"]["/healthz"]["get"]
        # A non-bearer Authorization is refused in the protocol's envelope.
        resp = await http.get("/v1/agents", headers={"Authorization": "Basic dTpw"})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "UNAUTHORIZED"


async def test_asyncapi_of_the_client_protocol_is_served() -> None:
    async with _client() as http:
        resp = await http.get("/asyncapi.json")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        doc = resp.json()
        assert doc["asyncapi"] == "3.0.0"
        assert doc["channels"]["ws"]["address"] == "/ws"
        assert "message_send_command" in doc["components"]["messages"]
        assert "message_new_event" in doc["components"]["messages"]
        # The same bytes as the committed docs/asyncapi/client.json (drift: make generate).
        assert resp.content == asyncapi.render_client()
