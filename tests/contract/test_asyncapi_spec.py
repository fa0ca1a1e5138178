"""The generated AsyncAPI documents are valid AsyncAPI 3.0: checked against the official
JSON Schema of the specification (npm @asyncapi/specs, locked in web/package-lock.json and
installed by `make web`, which `make test` runs before pytest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "web/node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    if not SPEC.is_file():
        pytest.fail(f"{SPEC.relative_to(REPO)} is missing: run `make web` (npm ci in web/)")
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text(encoding="utf-8")))


def _errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(doc)
    ]


@pytest.mark.parametrize("name", ["client.json", "nats.json"])
def test_committed_documents_are_valid_asyncapi(
    validator: jsonschema.Draft7Validator, name: str
) -> None:
    doc = json.loads((REPO / "docs/asyncapi" / name).read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    assert _errors(validator, doc) == []


def test_the_check_can_fail(validator: jsonschema.Draft7Validator) -> None:
    doc = json.loads((REPO / "docs/asyncapi/nats.json").read_text(encoding="utf-8"))
    next(iter(doc["operations"].values()))["action"] = "publish"  # AsyncAPI 2's word
    assert _errors(validator, doc)
