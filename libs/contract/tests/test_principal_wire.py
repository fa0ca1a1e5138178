"""``Principal.wire()`` is ``model_dump(mode="json")``, built by hand: the same document for
every kind, with and without a name, and a reminder when the model gains a field."""

from __future__ import annotations

import pytest

from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal


def test_the_model_has_the_fields_wire_writes() -> None:
    assert set(Principal.model_fields) == {"id", "kind", "name"}


@pytest.mark.parametrize("kind", list(PrincipalKind))
@pytest.mark.parametrize("name", [None, "", "Alice", "名前 ✓"])
def test_wire_is_the_json_dump(kind: PrincipalKind, name: str | None) -> None:
    p = Principal(id="u-1", kind=kind, name=name)
    assert p.wire() == p.model_dump(mode="json")
    assert list(p.wire()) == list(p.model_dump(mode="json"))  # same key order on the wire
