"""The chat page across gateways, in headless Chromium: a second browser on the other
gateway sees a turn live; the page's gateway killed, it resumes its session and loses
nothing, on the same gateway or (``?gateways=``) on the other one. Checked against the
stored history as in test_chat_page.py."""

from __future__ import annotations

import pytest

from .chatpage import assert_same_as_stored, send_as, shown
from .conftest import MESSAGES
from .test_chat_page import Browsers, Shot, System, create_conversation, send, wait_turn_done

# Each test drives a real system in a browser; the module's first test also starts the stack.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


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
    send_as(system, "user-2", 1, cid, missed)
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
        send_as(system, "user-2", 1, cid, ["while failing over"])
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
