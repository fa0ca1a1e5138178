"""Issue 15 / 17: files from the composer (pick, drop, paste) to another user's screen.

Alice (gateway 0) attaches three images — picked with the file button, dropped on the
composer, pasted into the text box — and a file the gateway refuses (its chip says why and
can be removed); she sends once the uploads are done. Bob (gateway 1) sees the three images
rendered (the signed links the message carries, no token in the <img>) and opens one in the
lightbox; the stored message carries the seed's attachment shape.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parley_client.testing import png

from .conftest import MESSAGES, Browsers, System, Ui

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
Shot = Callable[[Any, str], Path]


# Build a File in the page and hand it to the composer as a drop or a paste would.
GIVE_FILE = """([how, name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: 'image/png' }));
  const init = { bubbles: true, cancelable: true };
  if (how === 'drop') {
    const form = document.querySelector('form.composer');
    form.dispatchEvent(new DragEvent('dragover', { ...init, dataTransfer: dt }));
    form.dispatchEvent(new DragEvent('drop', { ...init, dataTransfer: dt }));
  } else {
    const box = document.querySelector('[data-testid=composer-input]');
    box.dispatchEvent(new ClipboardEvent('paste', { ...init, clipboardData: dt }));
  }
}"""


def test_upload_from_the_composer_is_rendered_for_another_user(
    system: System, browsers: Browsers, ui: Ui, shot: Shot
) -> None:
    alice = browsers.new_page("user-1", gateway=0)
    bob = browsers.new_page("user-2", gateway=1)
    cid = ui.create_conversation(alice, "Uploads", agent="", invite="user-2")
    bob.click(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    bob.wait_for_selector('[data-testid="conversation-title"]:has-text("Uploads")')

    picked, dropped, pasted = png(40, 30, 0x30), png(20, 20, 0x90), png(16, 8, 0xE0)
    alice.set_input_files(
        '[data-testid="file-input"]',
        files=[
            {"name": "picked.png", "mimeType": "image/png", "buffer": picked},
            {"name": "tool.exe", "mimeType": "application/x-msdownload", "buffer": b"MZ" * 50},
        ],
    )
    alice.evaluate(GIVE_FILE, ["drop", "dropped.png", base64.b64encode(dropped).decode()])
    alice.evaluate(GIVE_FILE, ["paste", "pasted.png", base64.b64encode(pasted).decode()])
    chips = '[data-testid="pending-file"]'
    alice.wait_for_function(
        "s => document.querySelectorAll(s + '[data-state=done]').length === 3",
        arg=chips,
    )
    failed = alice.wait_for_selector(f'{chips}[data-state="failed"]')
    assert "tool.exe" in (failed.text_content() or "")
    assert "not accepted" in (failed.get_attribute("title") or "")
    shot(alice, "pending")
    failed.query_selector('[data-testid="remove-upload"]').click()
    alice.wait_for_selector(f'{chips}[data-state="failed"]', state="detached")

    ui.send(alice, "three pictures")
    alice.wait_for_selector(f'{MESSAGES}:has-text("three pictures")[data-seq]')
    assert alice.locator(chips).count() == 0

    msg = bob.wait_for_selector(f'{MESSAGES}:has-text("three pictures")')
    bob.wait_for_function(
        """m => {
          const imgs = [...m.querySelectorAll('[data-testid=attachment-image] img')];
          return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=msg,
    )
    sizes = bob.evaluate(
        """m => [...m.querySelectorAll('[data-testid=attachment-image] img')]
                 .map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.getAttribute('src')])""",
        msg,
    )
    assert [s[:3] for s in sizes] == [
        ["picked.png", 40, 30],
        ["dropped.png", 20, 20],
        ["pasted.png", 16, 8],
    ]
    assert all("/v1/attachments/" in s[3] and "sig=" in s[3] for s in sizes)
    shot(bob, "received")
    msg.query_selector('[data-testid="attachment-image"]').click()
    bob.wait_for_selector('[data-testid="lightbox"] img[alt="picked.png"]')
    bob.keyboard.press("Escape")

    stored = system.history(cid, "user-2", gateway=1)
    sent = next(m for m in stored if m.get("content") == "three pictures")
    assert [(a["filename"], a["mimeType"], a["size"]) for a in sent["attachments"]] == [
        ("picked.png", "image/png", len(picked)),
        ("dropped.png", "image/png", len(dropped)),
        ("pasted.png", "image/png", len(pasted)),
    ]
