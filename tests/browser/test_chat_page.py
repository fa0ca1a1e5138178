"""The chat page against the real running system, in headless Chromium (issue 5).

Every test drives the page as a user would (sign in with a token, create, send, click) and
compares what the page shows with what the system stored (HTTP history).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client

from .conftest import MESSAGES, Ui, fetch

# Each test drives a real system in a browser; the module's first test also starts the stack.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Fixture types (defined in conftest.py): the running system, browsers, screenshots.
System = Any
Browsers = Any
Shot = Callable[[Any, str], Path]


create_conversation = Ui.create_conversation
send = Ui.send
wait_turn_done = Ui.wait_turn_done


def agent_texts(page: Any) -> int:
    return int(
        page.locator(f'{MESSAGES}[data-role="assistant"][data-message-type="text"]').count()
        + page.locator(f'{MESSAGES}[data-message-type="error"]').count()
    )


def shown(page: Any) -> list[dict[str, Any]]:
    """The messages the page shows, by seq (a tool result is shown inside its call, so the
    page's top-to-bottom order puts each result right after its call); unsent ones last."""
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        MESSAGES,
        """els => els.map(e => ({id: e.dataset.messageId, type: e.dataset.messageType,
                                 role: e.dataset.role, seq: Number(e.dataset.seq || 0)}))""",
    )
    return sorted(rows, key=lambda r: r["seq"] or float("inf"))


def squeeze(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


def assert_same_as_stored(system: System, page: Any, cid: str, sub: str = "user-1") -> None:
    """The page shows exactly the stored history: nothing twice, nothing missing, in order."""
    deadline = time.monotonic() + 10
    while True:
        stored = [m["_id"] for m in system.history(cid, sub)]
        ids = [m["id"] for m in shown(page)]
        assert len(ids) == len(set(ids)), f"a message is shown twice: {ids}"
        if ids == stored:
            return
        if time.monotonic() > deadline:
            assert ids == stored, "the page must show exactly the stored history"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------


def test_gateway_serves_the_page(system: System, browsers: Browsers, shot: Shot) -> None:
    """GET / on every gateway returns the built chat page (PARLEY_GATEWAY_WEB_DIST)."""
    for i in range(len(system.stack.gateways)):
        status, body = fetch(system.url(i) + "/")
        assert status == 200
        assert b'id="root"' in body, (
            f"gateway {i + 1} answered GET / with {len(body)} bytes instead of web/dist/index.html"
            " (its in-process ASGI call reports ASGI spec 2.3 and answers the second receive()"
            " with http.disconnect, so Starlette's FileResponse cancels the body)"
        )
    page = browsers.new_page("user-1")
    assert page.get_attribute('[data-testid="self"]', "data-principal-id") == "user-1"
    assert page.text_content('[data-testid="self"]') == "User-1"  # the token's name
    shot(page, "signed-in")


def test_sign_in_with_a_pasted_token(system: System, browsers: Browsers, shot: Shot) -> None:
    page = browsers.new_page("user-1")
    page.click('[data-testid="settings-button"]')
    page.click('[data-testid="sign-out"]')
    page.wait_for_selector("#token-input")
    page.fill("#token-input", "not-a-token")
    page.click('button:has-text("Sign in")')
    page.wait_for_selector('[role="alert"]:has-text("refused")')
    shot(page, "refused")
    page.fill("#token-input", system.token("user-1"))
    page.click('button:has-text("Sign in")')
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
    assert page.get_attribute('[data-testid="self"]', "data-principal-id") == "user-1"


def test_dev_sign_in(system: System, browsers: Browsers, shot: Shot) -> None:
    status, _ = fetch(system.url(0) + "/v1/dev/token?sub=user-3")
    if status != 200:
        pytest.skip(f"this gateway has no development token endpoint (GET /v1/dev/token: {status})")
    page = browsers.new_page("user-1")
    page.click('[data-testid="settings-button"]')
    page.click('[data-testid="sign-out"]')
    page.fill("#dev-sub", "user-3")
    page.click('button:has-text("Dev sign-in")')
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
    assert page.get_attribute('[data-testid="self"]', "data-principal-id") == "user-3"


def test_demo_turns_render_every_message_type_in_order(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    # No agent first: switching to the demo agent writes a system message.
    cid = create_conversation(page, "Every message type", agent="")
    page.click("text=Conversation settings")
    page.select_option('[data-testid="switch-agent-input"]', "agent-demo")
    page.click('[data-testid="switch-agent"]')
    page.wait_for_selector(f'{MESSAGES}[data-message-type="system"]')

    send(page, "hello there")  # thinking, then a streamed text answer
    wait_turn_done(page, 1)
    send(page, "search AI news, then fail on the flaky api")  # two tools, one fails
    wait_turn_done(page, 2)
    send(page, "please simulate a backend error")  # an error message
    wait_turn_done(page, 3)

    types = [m["type"] if m["role"] != "user" else "user" for m in shown(page)]
    assert squeeze(types) == [
        "system",
        "user",
        "thinking",
        "text",
        "user",
        "tool_call",
        "tool_result",
        "text",
        "user",
        "error",
    ], types
    # Tool calls: each shows its name and arguments, and the outcome of its matching result.
    calls = page.locator('[data-testid="tool-call"]')
    states = {
        calls.nth(i).locator(".tool-name").text_content(): calls.nth(i).get_attribute(
            "data-tool-state"
        )
        for i in range(calls.count())
    }
    assert states == {"web_search": "success", "rate_limited_api": "error"}
    assert "AI news" in page.text_content('[aria-label="arguments of web_search"]')
    # Thinking is collapsible, with its duration.
    toggle = page.locator('[data-testid="thinking-toggle"]').first
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    # Usage, latency and cost on agent messages; conversation totals.
    meta = page.locator('[data-testid="turn"] [data-testid="message-meta"]').first
    assert "tokens" in meta.text_content()
    assert int(page.text_content('[data-testid="total-tokens"]')) > 0
    # Markdown: the search summary has bold titles in an ordered list.
    assert page.locator(f'{MESSAGES}[data-message-type="text"] ol li strong').count() >= 3
    # Errors and system messages are distinct.
    assert page.locator(f'{MESSAGES}[data-message-type="error"][role="alert"]').count() == 1
    assert_same_as_stored(system, page, cid)
    assert not page.page_errors
    shot(page, "all-types")
    page.locator(f'{MESSAGES}[data-message-type="tool_call"]').first.scroll_into_view_if_needed()
    shot(page, "tool-calls")
    # A tall view of the whole conversation (the README's screenshot comes from this one).
    page.click("text=Conversation settings")
    page.locator('[data-testid="tool-result-toggle"]').first.click()
    page.set_viewport_size({"width": 1280, "height": 2150})
    page.eval_on_selector('[data-testid="message-list"]', "el => { el.scrollTop = 0; }")
    shot(page, "full")


def test_tool_result_is_collapsed_and_expands(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    create_conversation(page, "Calculator")
    send(page, "calc 12 * 7")
    wait_turn_done(page, 1)
    result = page.locator(f'{MESSAGES}[data-message-type="tool_result"]')
    toggle = result.locator('[data-testid="tool-result-toggle"]')
    body = result.locator('[data-testid="tool-result-body"]')
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not body.is_visible()
    shot(page, "collapsed")
    toggle.focus()
    page.keyboard.press("Enter")  # keyboard works
    assert toggle.get_attribute("aria-expanded") == "true"
    assert body.is_visible()
    assert "84" in body.text_content()
    shot(page, "expanded")


def test_tool_call_spinner_until_result_and_stop(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    cid = create_conversation(page, "Slow tool")
    send(page, "do something slow")
    page.wait_for_selector('[data-testid="tool-spinner"]')
    status = page.wait_for_selector('[data-testid="agent-status"][data-status="tool-calling"]')
    assert "sleep" in status.text_content()
    shot(page, "spinner")
    page.click('[data-testid="stop-button"]')
    page.wait_for_selector('[data-testid="tool-spinner"]', state="detached")
    page.wait_for_selector('[data-testid="stop-button"]', state="detached")
    # The turn ends: an aborted answer, or (as the bridge does today) an apology for the
    # aborted tool. Either way, no more spinner, status or Stop button.
    wait_turn_done(page, 1)
    state = page.get_attribute('[data-testid="tool-call"]', "data-tool-state")
    assert state in {"error", "none"}, state
    shot(page, "stopped")
    assert_same_as_stored(system, page, cid)


def test_streaming_text_grows_and_ends_equal_to_stored(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    cid = create_conversation(page, "Streaming")
    # Record every text the streaming bubble shows, as it changes.
    page.evaluate(
        """() => {
          window.__streamed = [];
          new MutationObserver(() => {
            const el = document.querySelector('[data-testid=stream-text]');
            if (el) {
              const t = el.textContent;
              const last = window.__streamed[window.__streamed.length - 1];
              if (t !== last) window.__streamed.push(t);
            }
          }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.evaluate(
        """() => { window.__order = [];
          window.parley.on('*', f => window.__order.push(f.event === 'message:new'
            ? `message:new:${f.data.role}:${f.data.messageType}` : f.event)); }"""
    )
    send(page, "tell me about Parley")
    page.wait_for_selector('[data-testid="stream-bubble"]')
    time.sleep(0.4)
    shot(page, "streaming")
    wait_turn_done(page, 1)
    streamed: list[str] = page.evaluate("window.__streamed")
    assert len(streamed) >= 5, streamed
    for before, after in itertools.pairwise(streamed):
        assert after.startswith(before) and len(after) > len(before), (before, after)
    stored = [
        m for m in system.history(cid) if m["role"] == "assistant" and m["messageType"] == "text"
    ]
    # The bubble ends with the stored text, unless the last deltas came after the stored
    # message (the bridge publishes deltas, the conversation service message:new: no order
    # between them); the stored message:new is the source of truth and replaces the bubble.
    order: list[str] = page.evaluate("window.__order")
    late = max(i for i, e in enumerate(order) if e == "message:stream-delta") > order.index(
        "message:new:assistant:text"
    )
    if late:
        assert stored[-1]["content"].startswith(streamed[-1])
    else:
        assert streamed[-1] == stored[-1]["content"]
    # The stored message replaced the bubble: shown once, rendered from the stored copy.
    assert page.locator('[data-testid="stream-bubble"]').count() == 0
    final = page.locator(f'{MESSAGES}[data-message-id="{stored[-1]["_id"]}"]')
    assert final.count() == 1
    assert "Parley demo agent" in final.text_content()
    assert_same_as_stored(system, page, cid)
    shot(page, "streamed")


def test_second_browser_on_other_gateway_sees_it_live(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    alice = browsers.new_page("user-1", gateway=0)
    bob = browsers.new_page("user-2", gateway=1)
    cid = create_conversation(alice, "Two gateways", invite="user-2")
    # Bob's list updates live; he opens the conversation from it.
    bob.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    bob.wait_for_selector('[data-testid="conversation-title"]:has-text("Two gateways")')
    # Presence: Alice sees Bob online.
    alice.wait_for_selector('[data-testid="participant"][data-online="true"]:has-text("user-2")')
    # Typing: Bob types, Alice sees it.
    bob.fill('[data-testid="composer-input"]', "hmm")
    alice.wait_for_selector('[data-testid="typing-indicator"]:has-text("user-2")')
    shot(alice, "typing")
    bob.fill('[data-testid="composer-input"]', "")
    # Bob watches Alice's turn stream in, on the other gateway.
    bob.evaluate(
        """() => { window.__sawStream = false;
          new MutationObserver(() => { if (document.querySelector('[data-testid=stream-text]')
            ?.textContent) window.__sawStream = true; })
          .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    send(alice, "search the news about agents")
    bob.wait_for_selector('[data-testid="tool-call"]')
    wait_turn_done(bob, 1)
    wait_turn_done(alice, 1)
    assert bob.evaluate("window.__sawStream") is True
    assert_same_as_stored(system, alice, cid, "user-1")
    assert_same_as_stored(system, bob, cid, "user-2")
    assert alice.text_content('[data-testid="connection-state"]') != bob.text_content(
        '[data-testid="connection-state"]'
    ), "the two browsers must be on different gateway instances"
    shot(alice, "gateway-1")
    shot(bob, "gateway-2")


def _send_as(system: System, sub: str, gateway: int, cid: str, texts: list[str]) -> None:
    """Post messages from a plain WebSocket client (another user on another gateway)."""
    url = system.stack.ws_url(gateway) + "?access_token=" + system.token(sub)
    with websockets.sync.client.connect(url, open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["event"] == "connected"
        batch = uuid.uuid4().hex[:8]
        for i, text in enumerate(texts):
            command = {
                "event": "message:send",
                "id": f"s{i}",
                "data": {"conversationId": cid, "content": text, "clientMessageId": f"{batch}-{i}"},
            }
            # A well-behaved client: on RATE_LIMITED it waits and retries the same message
            # (the clientMessageId makes the retry safe).
            for _attempt in range(20):
                ws.send(json.dumps(command))
                while True:
                    frame = json.loads(ws.recv(timeout=10))
                    if frame.get("id") == f"s{i}":
                        break
                if frame["success"] or frame["error"]["code"] != "RATE_LIMITED":
                    break
                time.sleep(0.5)
            assert frame["success"], frame


def test_killing_the_pages_gateway_reconnects_and_loses_nothing(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1", gateway=0)
    cid = create_conversation(page, "Resume", agent="", invite="user-2")
    send(page, "before the crash")
    page.wait_for_selector(f'{MESSAGES}:has-text("before the crash")[data-seq]')
    session = page.evaluate("window.parley.sessionId")

    gateway = system.stack.gateways[0]
    gateway.process.kill()
    page.wait_for_selector('[data-testid="connection-state"][data-state="reconnecting"]')
    page.wait_for_selector('[data-testid="offline-note"]')
    shot(page, "reconnecting")
    # While the page is cut off, someone else talks through the other gateway.
    missed = [f"said while you were away {i}" for i in range(3)]
    _send_as(system, "user-2", 1, cid, missed)
    # And the page's user sends one too: it waits, then goes out once after the reconnect.
    send(page, "sent while offline")
    page.wait_for_selector(f'{MESSAGES}:has-text("sent while offline"):has-text("sending")')
    shot(page, "sending-offline")

    gateway.process.start()
    system.stack.wait_ready(gateway)
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]', timeout=30_000)
    assert page.evaluate("window.parley.sessionId") == session, "must resume the same session"
    assert int(page.get_attribute('[data-testid="connection-state"]', "data-reconnects")) >= 1
    for text in missed:
        page.wait_for_selector(f'{MESSAGES}:has-text("{text}")')
    page.wait_for_selector(f'{MESSAGES}:has-text("sent while offline")[data-seq]')
    send(page, "after the crash")
    page.wait_for_selector(f'{MESSAGES}:has-text("after the crash")[data-seq]')
    assert_same_as_stored(system, page, cid)
    shot(page, "resumed")


def test_history_pages_by_seq_when_scrolling_up(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1", gateway=0)
    cid = create_conversation(page, "Long history", agent="")
    _send_as(system, "user-1", 1, cid, [f"line {i}" for i in range(80)])
    page.wait_for_selector(f'{MESSAGES}:has-text("line 79")')
    page.reload()
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
    page.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    page.wait_for_selector(f'{MESSAGES}:has-text("line 79")')
    first = len(shown(page))
    assert first < 81  # one page, not everything
    for _ in range(10):
        if len(shown(page)) >= 81:
            break
        page.eval_on_selector('[data-testid="message-list"]', "el => { el.scrollTop = 0; }")
        time.sleep(0.5)
    assert_same_as_stored(system, page, cid)
    shot(page, "scrolled-up")


def test_phone_sized_screen(system: System, browsers: Browsers, shot: Shot) -> None:
    page = browsers.new_page("user-1")
    page.set_viewport_size({"width": 390, "height": 800})
    create_conversation(page, "On a phone")
    send(page, "search phones")
    wait_turn_done(page, 1)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    shot(page, "conversation")
    page.click('[aria-label="Back to conversations"]')
    page.wait_for_selector('[data-testid="conversation-list"]')
    shot(page, "list")


AXE = REPO_ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"


def _axe(page: Any) -> list[dict[str, Any]]:
    """Serious and critical WCAG A/AA violations reported by axe-core on the current page."""
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate(
        """async () => await axe.run(document, {
              runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"""
    )
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_accessible_with_axe_and_keyboard(system: System, browsers: Browsers, shot: Shot) -> None:
    if not AXE.exists():
        pytest.skip("axe-core is not installed in web/node_modules (cd web && npm ci)")
    page = browsers.new_page("user-1")
    assert _axe(page) == []
    # Keyboard only: create a conversation, send, open a tool result.
    page.focus('[data-testid="new-chat"]')
    page.keyboard.press("Enter")  # opens the New chat dialog
    page.wait_for_selector('[data-testid="new-chat-dialog"]')
    assert _axe(page) == []
    page.focus('[data-testid="new-title"]')
    page.keyboard.type("Keyboard only")
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_selector('[data-testid="conversation-title"]:has-text("Keyboard only")')
    page.focus('[data-testid="composer-input"]')
    page.keyboard.type("calc 2 + 3")
    page.keyboard.press("Enter")
    wait_turn_done(page, 1)
    page.focus('[data-testid="tool-result-toggle"]')
    page.keyboard.press("Space")
    assert page.get_attribute('[data-testid="tool-result-toggle"]', "aria-expanded") == "true"
    assert _axe(page) == []
    shot(page, "keyboard")


def test_page_fails_over_to_the_other_gateway_with_its_session(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    """With ?gateways=<other>, a page whose gateway dies resumes its session on the other one."""
    other = system.url(1)
    page = browsers.new_page("user-1", gateway=0, query=f"?gateways={other}")
    cid = create_conversation(page, "Failover", agent="", invite="user-2")
    send(page, "on gateway one")
    page.wait_for_selector(f'{MESSAGES}:has-text("on gateway one")[data-seq]')
    session = page.evaluate("window.parley.sessionId")
    assert page.evaluate("window.parley.instanceId") == "gateway-1"

    gateway = system.stack.gateways[0]
    gateway.process.kill()
    try:
        _send_as(system, "user-2", 1, cid, ["while failing over"])
        page.wait_for_function("() => window.parley.instanceId === 'gateway-2'")
        page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
        assert page.evaluate("window.parley.sessionId") == session
        page.wait_for_selector(f'{MESSAGES}:has-text("while failing over")')
        send(page, "now on gateway two")
        page.wait_for_selector(f'{MESSAGES}:has-text("now on gateway two")[data-seq]')
        ids = [m["id"] for m in shown(page)]
        stored = [m["_id"] for m in system.history(cid, gateway=1)]
        assert ids == stored
        shot(page, "on-gateway-2")
    finally:
        gateway.process.start()
        system.stack.wait_ready(gateway)
