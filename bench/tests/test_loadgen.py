"""The load generator against the trivial Node relay (bench/loadgen/mockgw.mjs): it counts
every delivery, matches typing:start to its send, checks seq order and measures nothing
that a test asserts on time (no timed test: speed is measured by ``python -m bench``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import scenarios
from bench.generator import GeneratorPool
from bench.profiling import summarize_collapsed
from bench.runs import mock_system

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node >= 20")


def _run(kind: str, tmp_path: Path) -> dict[str, Any]:
    with mock_system(1) as system:
        pop = scenarios.population(system, "t", n_convs=3, members=5, gateways=[0])
        pool = GeneratorPool(pop.clients, threads=2, per_process=1000, log_dir=tmp_path)
        try:
            setup = scenarios.setup(pool, pop)
            assert setup["connect"]["ok"] == 15
            assert setup["join"]["ok"] == 15
            return pool.load(
                {
                    "kind": kind,
                    "convs": [
                        {"conv": c["conv"], "sender": c["sender"], "senderGw": c["senderGw"]}
                        for c in pop.convs
                    ],
                    "ratePerSender": 20,
                    "durationMs": 500,
                    "drainMs": 500,
                    "contentBytes": 64,
                }
            )
        finally:
            pool.close()


def test_typing_every_delivery_counted_and_matched(tmp_path: Path) -> None:
    res = _run("typing", tmp_path)
    assert res["sent"] > 0
    assert res["delivered"] == res["sent"] * 4  # 4 receivers per conversation
    assert res["unmatched"] == 0
    latency = res["latencyMs"]
    assert isinstance(latency, dict)
    assert latency["same"]["count"] == res["delivered"]
    assert latency["cross"]["count"] == 0


def test_messages_acked_in_seq_order(tmp_path: Path) -> None:
    res = _run("message", tmp_path)
    assert res["acked"] == res["sent"] > 0
    assert res["delivered"] == res["acked"] * 4
    assert res["seqGaps"] == 0
    assert res["seqDuplicates"] == 0
    assert res["seqTailMissing"] == 0


def test_profile_summary_self_and_inclusive(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        'process 1:"python";main (a/b.py:1);push (x/site-packages/ws/c.py:9) 30\n'
        'process 1:"python";main (a/b.py:1) 10\n'
    )
    s = summarize_collapsed(raw, duration=1, rate=100)
    assert s["samples"] == 40
    assert s["self"][0] == {"frame": "push (ws/c.py)", "percent": 75.0}
    assert {"frame": "main (a/b.py)", "percent": 100.0} in s["inclusive"]
