"""Delivery and read receipts, unread counts and display names on the page (issues 15 and 17),
against the real system in headless Chromium: two users, one per gateway."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

System = Any
Browsers = Any
Ui = Any
Shot = Callable[[Any, str], Path]
MESSAGES = '[data-testid="message"]'


def item(cid: str) -> str:
    return f'[data-testid="conversation-item"][data-conversation-id="{cid}"]'


def badge(cid: str) -> str:
    return f'{item(cid)} [data-testid="unread-count"]'


def test_delivered_then_seen_by_and_server_unread_counts(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    alice = browsers.new_page("rcpt-alice", gateway=0)
    cid = ui.create_conversation(alice, "Receipts", agent="", invite="rcpt-bob")
    ui.send(alice, "did you get this?")
    mine = f'{MESSAGES}:has-text("did you get this?")[data-seq]'
    alice.wait_for_selector(mine)
    receipt = f'{mine} [data-testid="receipt"]'
    assert alice.get_attribute(receipt, "data-state") == "sent"

    # Bob's page, on the other gateway and in a fresh browser (nothing in its storage): the
    # unread count is the server's. His page watches the conversation, so Alice's message
    # has reached a connection of his: "Delivered".
    bob = browsers.new_page("rcpt-bob", gateway=1)
    bob.wait_for_selector(f"{badge(cid)}:has-text('1')")
    assert bob.title() == "(1) Parley"
    alice.wait_for_selector(f'{receipt}[data-state="delivered"]')
    shot(alice, "delivered")

    # Bob opens it: Alice sees "Seen by" with his display name, his count is gone.
    bob.click(item(cid))
    bob.wait_for_selector(f'{MESSAGES}:has-text("did you get this?")')
    alice.wait_for_selector(f'{receipt}[data-state="seen"]')
    assert "Seen by Rcpt-Bob" in alice.text_content(receipt)
    assert bob.locator(badge(cid)).count() == 0
    shot(alice, "seen")
    # The read is the server's: another fresh browser of Bob's shows no unread count.
    bob2 = browsers.new_page("rcpt-bob", gateway=0)
    bob2.wait_for_selector(item(cid))
    bob2.wait_for_timeout(500)
    assert bob2.locator(badge(cid)).count() == 0
    # Bob answers: Alice's page counts it in the list once she is elsewhere.
    ui.create_conversation(alice, "Elsewhere", agent="")
    ui.post("rcpt-bob", 1, cid, ["yes, got it"])
    alice.wait_for_selector(f"{badge(cid)}:has-text('1')")


def test_unread_counts_live_beyond_the_watched_conversations_and_names(
    system: System, browsers: Browsers, ui: Ui
) -> None:
    # Carol (never online in a browser) makes 22 conversations with Dan over a plain
    # WebSocket: the page watches only the 20 most recent, the oldest is not watched.
    created = ui.command(
        "rcpt-carol",
        0,
        [
            {
                "event": "conversation:create",
                "data": {"title": f"Room {i:02d}", "participants": ["rcpt-dan"]},
            }
            for i in range(22)
        ],
    )
    oldest = created[0]["_id"]
    dan = browsers.new_page("rcpt-dan", gateway=1)
    dan.wait_for_selector(item(oldest))
    watched = dan.evaluate("() => window.parley.joinedConversations()")
    assert oldest not in watched, "the oldest conversation is beyond the watched ones"
    ui.post("rcpt-carol", 0, oldest, ["one", "two"])
    # conversation:activity reaches Dan's page: the entry is refreshed from the server.
    dan.wait_for_selector(f"{badge(oldest)}:has-text('2')")
    assert "two" in dan.text_content(f'{item(oldest)} [data-testid="conversation-preview"]')
    # Carol never opened the page: her name comes from the directory, not from presence.
    dan.click(item(oldest))
    dan.wait_for_selector('[data-testid="participant"][data-participant-id="rcpt-carol"]')
    assert "Rcpt-Carol" in dan.text_content(
        '[data-testid="participant"][data-participant-id="rcpt-carol"]'
    )
    assert dan.locator(badge(oldest)).count() == 0
