"""Issue 13 in the browser (headless Chromium against the real running system):

- switching conversations and back loses nothing (leaving is watching, not quitting);
- a reload in the middle of an agent's answer shows the answer growing from where it was.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from .chatpage import assert_same_as_stored
from .conftest import MESSAGES
from .test_chat_page import (
    Browsers,
    Shot,
    System,
    create_conversation,
    send,
    wait_turn_done,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

STREAM_TEXT = '[data-testid="stream-text"]'


def open_conversation(page: Any, cid: str) -> None:
    page.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    page.wait_for_function(
        "c => document.querySelector('[data-testid=conversation-id]')?.textContent === c",
        arg=cid,
    )


def test_switching_conversations_and_back_loses_nothing(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    first = create_conversation(page, "First room", agent="")
    send(page, "hello first")
    page.wait_for_selector(f'{MESSAGES}:has-text("hello first")[data-seq]')
    second = create_conversation(page, "Second room", agent="")  # the page leaves the first
    send(page, "hello second")
    page.wait_for_selector(f'{MESSAGES}:has-text("hello second")[data-seq]')
    open_conversation(page, first)
    send(page, "back in first")
    page.wait_for_selector(f'{MESSAGES}:has-text("back in first")[data-seq]')
    assert not page.locator('[data-testid="notice"]').count() or "FORBIDDEN" not in (
        page.text_content('[data-testid="notice"]') or ""
    )
    assert [m["content"] for m in system.history(first)] == ["hello first", "back in first"]
    assert_same_as_stored(system, page, first)
    open_conversation(page, second)
    assert_same_as_stored(system, page, second)
    # Both are still listed (still a participant of each).
    items = page.eval_on_selector_all(
        '[data-testid="conversation-item"]', "els => els.map(e => e.dataset.conversationId)"
    )
    assert first in items and second in items
    shot(page, "back-and-forth")


def test_reload_mid_answer_shows_the_answer_growing_from_where_it_was(
    system: System, browsers: Browsers, shot: Shot
) -> None:
    page = browsers.new_page("user-1")
    cid = create_conversation(page, "Reload mid-answer")
    # The demo agent quotes the question: a long one makes a long answer (a word a delta).
    question = " ".join(f"word{i}" for i in range(120))
    send(page, question)
    page.wait_for_function(
        "s => (document.querySelector(s)?.textContent || '').length > 120", arg=STREAM_TEXT
    )
    before = page.text_content(STREAM_TEXT) or ""
    page.reload()
    page.wait_for_selector('[data-testid="connection-state"][data-state="open"]')
    page.evaluate(
        """s => {
          window.__streamed = [];
          new MutationObserver(() => {
            const el = document.querySelector(s);
            if (el) {
              const t = el.textContent;
              const last = window.__streamed[window.__streamed.length - 1];
              if (t !== last) window.__streamed.push(t);
            }
          }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""",
        STREAM_TEXT,
    )
    open_conversation(page, cid)
    page.wait_for_selector('[data-testid="stream-bubble"]')
    shot(page, "reloaded-mid-answer")
    wait_turn_done(page, 1)
    streamed: list[str] = page.evaluate("window.__streamed")
    assert streamed, "the answer in progress was not shown after the reload"
    # It starts from where it was (at least what was shown before the reload), not empty...
    assert streamed[0].startswith(before) and len(streamed[0]) >= len(before), (
        before,
        streamed[0],
    )
    # ...and grows from there to the stored answer.
    assert len(streamed) >= 3, streamed
    for a, b in itertools.pairwise(streamed):
        assert b.startswith(a) and len(b) > len(a), (a, b)
    stored = [
        m for m in system.history(cid) if m["role"] == "assistant" and m["messageType"] == "text"
    ]
    # The last deltas can arrive with the stored answer (one read, one render): the bubble
    # then gives way to the answer without having shown them, never something else.
    assert stored[-1]["content"].startswith(streamed[-1])
    time.sleep(0.2)
    assert_same_as_stored(system, page, cid)
    answer = page.text_content(f'[data-message-id="{stored[-1]["_id"]}"]') or ""
    assert stored[-1]["content"] in answer  # the whole answer, deltas or not
    shot(page, "answered")
