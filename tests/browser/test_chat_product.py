"""The chat page as a chat product (issue 15), against the real system in headless Chromium.

New chat from the agent picker, one block per agent turn, the address naming the open
conversation (switch, Back, reload, deep link), message actions seen live on the other
gateway, attachments, the new-messages pill, a phone, and the README's screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
System = Any
Browsers = Any
Ui = Any
Shot = Callable[[Any, str], Path]
MESSAGES = '[data-testid="message"]'


def unread_badge(cid: str) -> str:
    item = f'[data-testid="conversation-item"][data-conversation-id="{cid}"]'
    return f'{item} [data-testid="unread-count"]'


def open_in_url(page: Any) -> str | None:
    q = parse_qs(urlparse(page.url).query)
    return q["c"][0] if "c" in q else None


def stored(system: System, cid: str, sub: str = "user-1") -> list[dict[str, Any]]:
    return list(system.history(cid, sub))


def test_new_chat_with_the_demo_agent_from_the_picker(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    page.click('[data-testid="new-chat"]')
    dialog = page.wait_for_selector('[data-testid="new-chat-dialog"]')
    # The picker lists what GET /v1/agents serves, by name, with its presence.
    option = page.locator('label:has([data-testid="agent-option-agent-demo"])')
    option.wait_for()
    # agent-demo is served: online before any answer (the label may first come from the
    # page's built-in fallback list, its status unknown until GET /v1/agents answers).
    option.locator(".dot.on").wait_for(timeout=10_000)
    assert page.locator('input[id="new-agent"]').count() == 0, "no agent id field"
    shot(page, "picker")
    page.check('[data-testid="agent-option-agent-demo"]')
    page.fill('[data-testid="new-title"]', "Picked")
    page.click('[data-testid="create-conversation"]')
    dialog.wait_for_element_state("hidden")
    page.wait_for_selector('[data-testid="conversation-title"]:has-text("Picked")')
    cid = page.text_content('[data-testid="conversation-id"]')
    assert open_in_url(page) == cid, "the address names the open conversation"
    page.wait_for_selector('[data-testid="participant"][data-participant-id="agent-demo"]')
    ui.send(page, "hello there")
    ui.wait_turn_done(page, 1)
    item = page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    assert item.locator(".conv-title").text_content() == "Picked"
    assert item.locator('[data-testid="conversation-preview"]').text_content().strip()
    shot(page, "answered")


def test_a_full_turn_is_one_block(system: System, browsers: Browsers, ui: Ui, shot: Shot) -> None:
    page = browsers.new_page("user-1")
    cid = ui.create_conversation(page, "One block")
    ui.send(page, "search AI news, then fail on the flaky api")
    ui.wait_turn_done(page, 1)
    turns = page.locator('[data-testid="turn"]')
    assert turns.count() == 1
    turn = turns.first
    # Every stored agent message of the turn is inside the one block, under one header.
    agent_ids = {m["_id"] for m in stored(system, cid) if m["role"] in ("assistant", "tool")}
    inside = set(turn.locator(MESSAGES).evaluate_all("els => els.map(e => e.dataset.messageId)"))
    assert inside == agent_ids
    assert turn.locator(".turn-head").count() == 1
    assert turn.locator(".msg-head").count() == 1, "no per-message headers inside a turn"
    # Each tool call holds its own result (paired), with status and duration.
    calls = turn.locator('[data-testid="tool-call"]')
    assert calls.count() == 2
    for i in range(calls.count()):
        call = calls.nth(i)
        assert call.locator(f'{MESSAGES}[data-message-type="tool_result"]').count() == 1
    ok = turn.locator('[data-testid="tool-call"][data-tool-state="success"]')
    assert " in " in ok.locator(".badge").text_content()  # "done in 1.2 s"
    toggle = ok.locator('[data-testid="tool-result-toggle"]')
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.click()
    assert ok.locator('[data-testid="tool-result-body"]').is_visible()
    # The usage and cost footer belongs to the block, quietly at its end.
    foot = turn.locator(".turn-foot [data-testid='message-meta']")
    assert "tokens" in foot.text_content() and "$" in foot.text_content()
    shot(page, "turn")


def test_switching_back_and_reloading_keep_access_and_messages(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    a = ui.create_conversation(page, "First room", agent="", invite="user-2")
    ui.send(page, "in the first room")
    page.wait_for_selector(f'{MESSAGES}:has-text("in the first room")[data-seq]')
    b = ui.create_conversation(page, "Second room", agent="")
    ui.send(page, "in the second room")
    page.wait_for_selector(f'{MESSAGES}:has-text("in the second room")[data-seq]')
    # Switch by the list, then Back and Forward.
    page.click(f'[data-testid="conversation-item"][data-conversation-id="{a}"]')
    page.wait_for_selector(f'{MESSAGES}:has-text("in the first room")')
    assert open_in_url(page) == a
    page.go_back()
    page.wait_for_selector('[data-testid="conversation-title"]:has-text("Second room")')
    page.go_back()
    page.wait_for_selector('[data-testid="conversation-title"]:has-text("First room")')
    page.go_forward()
    page.wait_for_selector(f'{MESSAGES}:has-text("in the second room")')
    # Someone writes in the room we switched away from: it is still watched (unread count).
    ui.post("user-2", 1, a, ["while you were in the other room"])
    page.wait_for_selector(unread_badge(a))
    assert page.title() == "(1) Parley"
    # Reload: the same conversation, its messages, and we can still write.
    page.reload()
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
    page.wait_for_selector(f'{MESSAGES}:has-text("in the second room")')
    assert open_in_url(page) == b
    ui.send(page, "after the reload")
    page.wait_for_selector(f'{MESSAGES}:has-text("after the reload")[data-seq]')
    # Opening the other room clears its unread count; it holds every message.
    page.click(f'[data-testid="conversation-item"][data-conversation-id="{a}"]')
    page.wait_for_selector(f'{MESSAGES}:has-text("while you were in the other room")')
    assert page.locator(unread_badge(a)).count() == 0
    # Nobody left anything: both rooms still list user-1 as an active participant.
    for cid in (a, b):
        conv = ui.command(
            "user-1", 1, [{"event": "conversation:join", "data": {"conversationId": cid}}]
        )
        people = conv[0]["conversation"]["participants"]
        assert any(p.get("userId") == "user-1" and not p.get("leftAt") for p in people), people
    # A deep link in a fresh browser opens the conversation.
    other = browsers.new_page("user-1", query=f"?c={a}")
    other.wait_for_selector(f'{MESSAGES}:has-text("in the first room")')
    assert other.text_content('[data-testid="conversation-title"]') == "First room"
    shot(other, "deep-link")


def test_edit_delete_react_reply_seen_live_on_the_other_gateway(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    alice = browsers.new_page("user-1", gateway=0)
    bob = browsers.new_page("user-2", gateway=1)
    cid = ui.create_conversation(alice, "Actions", agent="", invite="user-2")
    bob.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    bob.wait_for_selector('[data-testid="conversation-title"]:has-text("Actions")')
    ui.send(alice, "hello bob")
    msg = alice.wait_for_selector(f'{MESSAGES}:has-text("hello bob")[data-seq]')
    mid = msg.get_attribute("data-message-id")
    at_bob = f'{MESSAGES}[data-message-id="{mid}"]'
    bob.wait_for_selector(at_bob)
    # Bob sees Alice by her token's name, not her id.
    assert "User-1" in bob.text_content(f"{at_bob} .who")
    actions = f'[data-testid="message-actions"][data-for="{mid}"]'
    # Edit (own message only: Bob has no Edit on it).
    assert bob.locator(f'{actions} [data-testid="edit"]').count() == 0
    alice.click(f'{actions} [data-testid="edit"]')
    alice.fill('[data-testid="edit-input"]', "hello bob, edited")
    alice.click('[data-testid="edit-save"]')
    bob.wait_for_selector(f'{at_bob}:has-text("hello bob, edited") .badge:has-text("edited")')
    # Reactions: Bob adds one from the picker, Alice sees the chip with who; she adds hers.
    bob.click(f'{actions} [data-testid="react"]')
    bob.click(f'{actions} [data-testid="pick-emoji"][data-emoji="👍"]')
    chip = f'{actions} [data-testid="reaction"][data-emoji="👍"]'
    alice.wait_for_selector(f'{chip}[data-count="1"]')
    assert "User-2" in (alice.get_attribute(chip, "title") or "")
    alice.click(chip)
    bob.wait_for_selector(f'{chip}[data-count="2"][aria-pressed="true"]')
    bob.click(chip)  # and Bob takes his back
    alice.wait_for_selector(f'{chip}[data-count="1"][aria-pressed="true"]')
    # Reply: Bob answers Alice's message; both see it quoted.
    bob.click(f'{actions} [data-testid="reply"]')
    bob.wait_for_selector('[data-testid="reply-preview"]:has-text("hello bob")')
    ui.send(bob, "replying to you")
    reply = f'{MESSAGES}:has-text("replying to you")'
    alice.wait_for_selector(f'{reply} [data-testid="reply-quote"]:has-text("hello bob, edited")')
    assert any(m.get("parentMessageId") == mid for m in stored(system, cid))
    shot(alice, "reacted")
    # Delete: a placeholder at both, the text gone from the store.
    alice.click(f'{actions} [data-testid="delete"]')
    alice.click(f'{actions} [data-testid="delete-confirm-message"]')
    bob.wait_for_selector(f'{at_bob}:has-text("This message was deleted")')
    alice.wait_for_selector(
        f'{MESSAGES}[data-message-id="{mid}"]:has-text("This message was deleted")'
    )
    gone = next(m for m in stored(system, cid) if m["_id"] == mid)
    assert gone.get("deletedAt") and not gone.get("content")
    shot(bob, "deleted")


def test_escape_stops_a_running_turn(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    cid = ui.create_conversation(page, "Esc")
    ui.send(page, "do something slow")
    page.wait_for_selector('[data-testid="tool-spinner"]')
    page.wait_for_selector('[data-testid="stop-button"]')
    page.keyboard.press("Escape")
    page.wait_for_selector('[data-testid="tool-spinner"]', state="detached")
    page.wait_for_selector('[data-testid="stop-button"]', state="detached")
    ui.wait_turn_done(page, 1)
    answers = [m for m in stored(system, cid) if m["role"] == "tool"]
    assert answers and not answers[-1]["toolResults"][0]["success"], answers


def test_rename_archive_delete(system: System, browsers: Browsers, ui: Ui, shot: Shot) -> None:
    alice = browsers.new_page("user-1", gateway=0)
    bob = browsers.new_page("user-2", gateway=1)
    cid = ui.create_conversation(alice, "Draft name", agent="", invite="user-2")
    item = f'[data-testid="conversation-item"][data-conversation-id="{cid}"]'
    bob.click(item)
    bob.wait_for_selector('[data-testid="conversation-title"]:has-text("Draft name")')
    alice.click('summary:has-text("Conversation settings")')
    alice.fill('[data-testid="rename-input"]', "Final name")
    alice.click('[data-testid="rename"]')
    bob.wait_for_selector('[data-testid="conversation-title"]:has-text("Final name")')
    bob.wait_for_selector(f'{item} .conv-title:has-text("Final name")')
    # Search by title.
    alice.fill('[data-testid="conversation-search"]', "final")
    assert alice.locator('[data-testid="conversation-item"]').count() == 1
    alice.fill('[data-testid="conversation-search"]', "")
    # Archive: out of the main list, under Archived.
    alice.click('[data-testid="archive"]')
    alice.wait_for_selector(item, state="detached")
    alice.click('[data-testid="show-archived"]')
    alice.wait_for_selector(item)
    shot(alice, "archived")
    # Delete (the creator only): gone from both lists; Bob's open pane closes.
    bob.click('summary:has-text("Conversation settings")')
    assert bob.locator('[data-testid="delete-conversation"]').count() == 0
    alice.click('[data-testid="delete-conversation"]')
    alice.click('[data-testid="delete-confirm"]')
    alice.wait_for_selector(item, state="detached")
    bob.wait_for_selector(item, state="detached")
    bob.wait_for_selector('[data-testid="notice"]:has-text("deleted")')
    bob.wait_for_selector('[data-testid="conversation-title"]', state="detached")
    shot(bob, "deleted")


def test_attachments_are_rendered(system: System, browsers: Browsers, ui: Ui, shot: Shot) -> None:
    page = browsers.new_page("user-1")
    image = (REPO / "docs" / "screenshot-phone-light.png").read_bytes()
    pdf = b"%PDF-1.4\n" + b"0" * 1_234_000
    cid = ui.create_conversation(page, "Files", agent="", invite="user-2")
    # Uploaded over HTTP by the other user, sent by id; served by the gateways with the
    # signed link the message carries (an <img> without a token).
    chart = ui.upload("user-2", 1, cid, image, filename="chart.png", ctype="image/png")
    report = ui.upload("user-2", 1, cid, pdf, filename="report.pdf", ctype="application/pdf")
    ui.post("user-2", 1, cid, ["two files for you"], attachments=[chart["id"], report["id"]])
    msg = page.wait_for_selector(f'{MESSAGES}:has-text("two files for you")')
    img = msg.wait_for_selector('[data-testid="attachment-image"] img')
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)
    assert img.get_attribute("alt") == "chart.png"
    chip = msg.wait_for_selector('[data-testid="attachment-file"]')
    text = chip.text_content()
    assert "report.pdf" in text and "application/pdf" in text and "1.2 MB" in text
    link = chip.query_selector("a")
    href = link.get_attribute("href") if link else None
    assert href and f"/v1/attachments/{report['id']}?exp=" in href
    shot(page, "inline")
    img.click()
    page.wait_for_selector('[data-testid="lightbox"] img')
    shot(page, "lightbox")
    page.keyboard.press("Escape")
    page.wait_for_selector('[data-testid="lightbox"]', state="detached")


def test_new_messages_pill_when_scrolled_up(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    cid = ui.create_conversation(page, "Busy room", agent="", invite="user-2")
    lines = "\n".join(f"line {i}" for i in range(6))
    ui.post("user-2", 1, cid, [f"message {i}\n{lines}" for i in range(12)])
    page.wait_for_selector(f'{MESSAGES}:has-text("message 11")')
    page.eval_on_selector('[data-testid="message-list"]', "el => { el.scrollTop = 0; }")
    time.sleep(0.3)
    assert page.locator('[data-testid="new-messages-pill"]').count() == 0
    ui.post("user-2", 1, cid, ["news 1", "news 2", "news 3"])
    pill = page.wait_for_selector('[data-testid="new-messages-pill"]:has-text("3 new messages")')
    at_top = page.eval_on_selector('[data-testid="message-list"]', "el => el.scrollTop")
    assert at_top < 50, "the reader's position is kept"
    shot(page, "pill")
    pill.click()
    page.wait_for_selector('[data-testid="new-messages-pill"]', state="detached")
    page.wait_for_function(
        """() => { const el = document.querySelector('[data-testid=message-list]');
                   return el.scrollHeight - el.scrollTop - el.clientHeight < 5; }"""
    )


def _one_row(page: Any) -> None:
    box = page.eval_on_selector(
        ".topbar",
        """el => ({h: el.getBoundingClientRect().height,
                  tops: [...el.children].filter(c => c.offsetParent && !c.matches('.settings-menu'))
                        .map(c => Math.round(c.getBoundingClientRect().top +
                                             c.getBoundingClientRect().height / 2))})""",
    )
    assert box["h"] < 56, f"the top bar wraps ({box})"
    assert max(box["tops"]) - min(box["tops"]) <= 4, f"the top bar is not one row ({box})"


def test_phone_390x844(system: System, browsers: Browsers, ui: Ui, shot: Shot) -> None:
    page = browsers.new_page("user-1")
    page.set_viewport_size({"width": 390, "height": 844})
    _one_row(page)
    ui.create_conversation(page, "Pocket")
    ui.send(page, "search phones")
    ui.wait_turn_done(page, 1)
    _one_row(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    assert page.locator('[data-testid="conversation-list"]').is_hidden()
    shot(page, "conversation")
    page.click('[aria-label="Back to conversations"]')
    page.wait_for_selector('[data-testid="conversation-list"]')
    assert open_in_url(page) is None
    shot(page, "list")


def _conversation_for_screenshots(system: System, browsers: Browsers, ui: Ui) -> tuple[Any, str]:
    page = browsers.new_page("user-1")
    cid = ui.create_conversation(page, "Launch plan", invite="user-2")
    ui.send(page, "search AI news for the launch notes")
    ui.wait_turn_done(page, 1)
    answer = [
        m for m in stored(system, cid) if m["messageType"] == "text" and m["role"] == "assistant"
    ]
    ui.command(
        "user-2",
        1,
        [{"event": "message:react",
          "data": {"conversationId": cid, "messageId": answer[-1]["_id"], "emoji": e}}
         for e in ("🎉", "👍")],
    )  # fmt: skip
    page.wait_for_selector('[data-testid="reaction"][data-emoji="👍"]')
    notes = (
        "Numbers for the launch notes:\n\n| metric | before | after |\n|---|---:|---:|\n"
        "| p50 ack | 8.1 ms | 2.4 ms |\n| recovery | 5 s | 1 s |\n\n"
        "```python\nasync def ack(msg):\n    await msg.ack()  # once, by clientMessageId\n```"
    )
    ui.post("user-2", 1, cid, [notes])
    page.wait_for_selector(f'{MESSAGES}:has-text("Numbers for the launch notes")')
    ui.wait_turn_done(page, 2)  # the agent answers every user message, user-2's too
    return page, cid


def _show_notes(page: Any) -> None:
    """Scroll so the notes (table, code) end at the bottom, the reacted turn above them."""
    page.eval_on_selector(
        f'{MESSAGES}:has-text("Numbers for the launch notes")',
        "el => el.scrollIntoView({block: 'end'})",
    )
    time.sleep(0.3)


def test_readme_screenshots(system: System, browsers: Browsers, ui: Ui, shot: Shot) -> None:
    """Desktop and phone, light and dark; PARLEY_DOCS_SCREENSHOTS=1 copies them to docs/."""
    page, cid = _conversation_for_screenshots(system, browsers, ui)
    # Others in the list: one with unread messages.
    other = ui.create_conversation(page, "Design review", agent="", invite="user-2")
    page.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    ui.post("user-2", 1, other, ["The new sidebar looks great", "Shipping it today?"])
    page.wait_for_selector('[data-testid="unread-count"]:text-is("2")')  # both counted
    shots: dict[str, Path] = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.set_viewport_size({"width": 1280, "height": 860})
        _show_notes(page)
        shots[f"desktop-{scheme}"] = shot(page, f"desktop-{scheme}")
        page.set_viewport_size({"width": 390, "height": 844})
        _show_notes(page)
        shots[f"phone-{scheme}"] = shot(page, f"phone-{scheme}")
    assert json.dumps(sorted(shots))
    if os.environ.get("PARLEY_DOCS_SCREENSHOTS") == "1":
        for name, path in shots.items():
            shutil.copyfile(path, REPO / "docs" / f"screenshot-{name}.png")
