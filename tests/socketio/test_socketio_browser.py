"""A page in headless Chromium that uses socket.io-client's browser bundle against Parley.

The page (served at the gateway's origin through Playwright's routing, so it is same-origin
like an app deployed with the gateways) does what a seed app does: ``io(origin, {auth})``,
``emit`` with acks, ``on`` for events. The client starts with long-polling and upgrades to
WebSocket in a real browser; two pages on two gateways talk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from parley_contract.auth import mint_token
from parley_devstack.stack import Stack

from .conftest import HERE, ensure_node_modules

CHROMIUM = "/usr/bin/chromium"
# The page comes from Playwright's routing, which Chromium treats as not local: without this
# its WebSocket to 127.0.0.1 is blocked (XHR to the same origin is not).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-features=LocalNetworkAccessChecks"]
BUNDLE = HERE / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"

PAGE = """<!doctype html><html><body><script src="/sio-test/socket.io.min.js"></script>
<script>
window.seen = [];
const socket = io(location.origin, { auth: { token: TOKEN } });
socket.on("connect", () => seen.push({ type: "connect", recovered: socket.recovered }));
socket.on("connect_error", (err) => seen.push({ type: "connect_error", data: err.data }));
socket.io.on("open", () => {
  seen.push({ type: "engine_open", transport: socket.io.engine.transport.name });
  socket.io.engine.on("upgrade", (t) => seen.push({ type: "upgrade", transport: t.name }));
  socket.io.engine.on("upgradeError", (e) => seen.push({ type: "upgradeError", error: String(e) }));
});
socket.onAny((event, payload) => seen.push({ type: "event", event, payload }));
window.call = (event, data) => new Promise((resolve) => socket.emit(event, data, resolve));
</script></body></html>"""


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python playwright package is not installed"
    if not (shutil.which("chromium") or Path(CHROMIUM).exists()):
        return "Chromium is not installed (apt-get install -y chromium)"
    return None


pytestmark = [pytest.mark.browser]


def _open(browser: Any, base: str, token: str) -> Any:
    page = browser.new_page()
    page.set_default_timeout(20_000)

    def serve(route: Any) -> None:
        if route.request.url.endswith("/socket.io.min.js"):
            route.fulfill(body=BUNDLE.read_bytes(), content_type="text/javascript")
        else:
            html = PAGE.replace("TOKEN", json.dumps(token))
            route.fulfill(body=html, content_type="text/html")

    page.route(f"{base}/sio-test/**", serve)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text))
    page.goto(f"{base}/sio-test/index.html")
    try:
        page.wait_for_function("seen.some((m) => m.type === 'connect')")
    except Exception as exc:
        raise AssertionError(f"{exc}: {page.evaluate('seen')} {errors}") from None
    return page


def _wait(page: Any, expr: str) -> None:
    try:
        page.wait_for_function(expr)
    except Exception as exc:
        raise AssertionError(f"{expr}: {exc}; the page saw {page.evaluate('seen')}") from None


def _call(page: Any, event: str, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate("([e, d]) => call(e, d)", [event, data])
    return out


def test_a_browser_page_with_socketio_client(sio_stack: Stack) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    ensure_node_modules()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            alice = _open(browser, sio_stack.gateway_url(0), mint_token("web-alice"))
            bob = _open(browser, sio_stack.gateway_url(1), mint_token("web-bob"))
            for page in (alice, bob):
                _wait(page, "seen.some((m) => m.type === 'upgrade')")
                opened = page.evaluate("seen.find((m) => m.type === 'engine_open')")
                assert opened["transport"] == "polling"
            r = _call(alice, "conversation:create", {"title": "web", "participants": ["web-bob"]})
            assert r["success"] is True, r
            cid = r["data"]["_id"]
            for page in (alice, bob):
                assert _call(page, "conversation:join", {"conversationId": cid})["success"]
            sent = _call(
                alice, "message:send", {"conversationId": cid, "content": "hi from chromium"}
            )
            assert sent["success"] is True, sent
            _wait(
                bob,
                "seen.some((m) => m.event === 'message:new'"
                " && m.payload.data.content === 'hi from chromium')",
            )
            assert _call(bob, "typing:start", {"conversationId": cid})["success"] is True
            _wait(alice, "seen.some((m) => m.event === 'typing:start')")
            bad = _call(alice, "message:send", {"conversationId": cid})
            assert bad["success"] is False and bad["error"]["code"] == "VALIDATION_ERROR"
        finally:
            browser.close()
