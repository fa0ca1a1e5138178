"""Where and when a client (re)connects: a gateway's ``/ws`` URL, the resume's ``since``
(docs/protocol.md section 1, "Exactness") and the backoff between attempts.

Pure functions; the connection (connection.py) decides when to call them. The web client's
counterpart is ``web/src/wire/dial.ts``.
"""

from __future__ import annotations

import base64
import json
import random
import urllib.parse


def ws_url(base: str) -> str:
    """``http(s)://host:port`` (or a ``ws(s)://`` URL) as the gateway's ``/ws`` URL."""
    parts = urllib.parse.urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path.endswith("/ws") else parts.path.rstrip("/") + "/ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def since_param(last_seqs: dict[str, int]) -> str:
    """The resume's ``since``: base64url, no padding, of ``{conversationId: lastSeq}``."""
    raw = json.dumps(last_seqs, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def default_backoff(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, 2 s, 4 s, then 5 s; ±25 % jitter."""
    base = min(5.0, 0.25 * 2.0**attempt)
    return base * random.uniform(0.75, 1.25)
