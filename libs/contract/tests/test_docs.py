"""The contract tables of README.md and docs/protocol.md are generated from the registries."""

from __future__ import annotations

from pathlib import Path

from parley_contract.docs import errors_table, events_table, subjects_table

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"


def test_readme_tables_match_the_registries() -> None:
    text = README.read_text(encoding="utf-8")
    for table in (events_table(), errors_table(), subjects_table()):
        assert table in text, "README is stale: run `uv run python -m parley_contract.docs`"


def test_protocol_tables_match_the_registries() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    for table in (events_table(), errors_table(), subjects_table()):
        assert table in text, (
            "docs/protocol.md is stale: run `uv run python -m parley_contract.docs`"
        )
