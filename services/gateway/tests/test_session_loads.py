"""Session reads in a reconnect storm (parley_gateway.sessions): at most LOAD_CONCURRENCY in
flight, the others wait for a slot before their own budget starts; once a read found the
bucket unavailable, the reads waiting behind it fail at once (503) instead of each waiting
out its budget. The bucket is a stand-in that answers when the test lets it (no timing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_gateway import sessions as sessions_module
from parley_gateway.metrics import Metrics
from parley_gateway.sessions import LOAD_CONCURRENCY, Sessions, SessionsUnavailable
from parley_gateway.settings import Settings

ALICE = Principal(id="alice", kind=PrincipalKind.USER)
DOC = b'{"principal": {"id": "alice", "kind": "user"}, "conversations": {"c": 3}}'


class Entry:
    def __init__(self, value: bytes) -> None:
        self.value = value


class Bucket:
    """get() waits for ``release``; counts the reads in flight; fails when told to."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most = 0
        self.fail = False

    async def get(self, key: str) -> Entry:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
            if self.fail:
                raise TimeoutError
            return Entry(
                b'{"principal": {"id": "alice", "kind": "user"}, "conversations": {"c": 3}}'
            )
        finally:
            self.in_flight -= 1


def _sessions(bucket: Bucket) -> Sessions:
    s = Sessions(Settings(environment="development", web_dist=None), Metrics())
    s.kv_sessions = bucket  # type: ignore[assignment]
    return s


async def test_a_burst_of_reads_waits_for_slots() -> None:
    bucket = Bucket()
    s = _sessions(bucket)
    n = LOAD_CONCURRENCY * 3
    loads = [asyncio.create_task(s.load_session(f"ses-{i}", ALICE)) for i in range(n)]
    while bucket.in_flight < LOAD_CONCURRENCY:  # noqa: ASYNC110
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert bucket.in_flight == LOAD_CONCURRENCY  # the rest wait, their budget not started
    bucket.release.set()
    got = await asyncio.gather(*loads)
    assert got == [{"c": 3}] * n and bucket.most == LOAD_CONCURRENCY


async def test_reads_behind_an_unavailable_bucket_fail_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions_module, "LOAD_BUDGET_SECONDS", 0.0)  # one attempt each
    bucket = Bucket()
    bucket.fail = True
    s = _sessions(bucket)
    n = LOAD_CONCURRENCY * 2
    loads = [asyncio.create_task(s.load_session(f"ses-{i}", ALICE)) for i in range(n)]
    while bucket.in_flight < LOAD_CONCURRENCY:  # noqa: ASYNC110
        await asyncio.sleep(0)
    bucket.release.set()
    got: list[Any] = await asyncio.gather(*loads, return_exceptions=True)
    assert all(isinstance(g, SessionsUnavailable) for g in got)
    assert bucket.most == LOAD_CONCURRENCY  # the second half never asked the bucket
