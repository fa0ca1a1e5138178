"""Every sample message (docs/protocol.md 3.3) validates as a Message and round-trips unchanged.

The 19 samples are the seed design's section 4 cases, kept in the repo at
``tests/data/sample-messages.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley_contract.jsonutil import dumps, loads, model_json
from parley_contract.models import Message

SEED = Path(__file__).resolve().parent / "data" / "sample-messages.jsonl"


def _samples() -> list[dict[str, Any]]:
    lines = SEED.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_seed_has_19_samples() -> None:
    assert len(_samples()) == 19


@pytest.mark.parametrize("sample", _samples(), ids=lambda s: s["case"])
def test_sample_round_trips_unchanged(sample: dict[str, Any]) -> None:
    raw = sample["message"]
    message = Message.model_validate(raw)
    assert model_json(message) == raw
    # and through the wire serializer, as bytes
    assert loads(dumps(model_json(message))) == raw
    assert Message.model_validate_json(dumps(raw)) == message


def test_unknown_field_is_refused() -> None:
    raw = dict(_samples()[0]["message"], bogus=1)
    with pytest.raises(ValueError, match="bogus"):
        Message.model_validate(raw)
