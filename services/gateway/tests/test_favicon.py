"""GET /favicon.ico: Parley's icon from every gateway process, with or without the web UI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .conftest import http_get


async def test_favicon_is_served_with_and_without_the_web_ui(
    gateway_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text('<html><link rel="icon" href="/favicon.ico"></html>')
    with_ui = gateway_factory({"PARLEY_GATEWAY_WEB_DIST": str(tmp_path)})
    without_ui = gateway_factory({"PARLEY_GATEWAY_WEB_DIST": str(tmp_path / "missing")})
    for gw in (with_ui, without_ui):
        status, body, headers = await asyncio.to_thread(http_get, gw.http + "/favicon.ico")
        assert status == 200, body[:200]
        assert headers["Content-Type"] == "image/x-icon"
        assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file
        assert len(body) > 100
