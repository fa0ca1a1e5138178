"""The NATS side as an AsyncAPI document: the contract's (``parley_contract.asyncapi_nats``,
generated from the registries and models) with the query models of its route table added.

``python -m parley_conversation.asyncapi [path]`` writes it (default
``docs/asyncapi/nats.json``, checked by a drift test); a running replica serves it at
``/asyncapi.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from parley_contract.asyncapi_nats import nats_document, render_nats
from parley_contract.routes import QUERY_ROUTES

# The query models (parley_contract.queries), by subject.
QUERIES: dict[str, type[BaseModel]] = {r.subject: r.data for r in QUERY_ROUTES if r.data}

DEFAULT_PATH = Path("docs/asyncapi/nats.json")


def build() -> dict[str, Any]:
    return nats_document(QUERIES)


def render() -> bytes:
    return render_nats(QUERIES)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render())


if __name__ == "__main__":
    main()
