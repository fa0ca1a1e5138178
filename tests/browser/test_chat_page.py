"""The chat page against the real running system, in headless Chromium (issue 5).

Every test drives the page as a user would (sign in with a token, create, send, click) and
compares what the page shows with what the system stored (HTTP history). Across gateways
(a second browser, a gateway killed, failover): test_chat_gateways.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .chatpage import assert_same_as_stored, send_as, shown
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


def squeeze(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


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


def test_history_pages_by_seq_when_scrolling_up(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1", gateway=0)
    cid = create_conversation(page, "Long history", agent="")
    send_as(system, "user-1", 1, cid, [f"line {i}" for i in range(80)])
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
