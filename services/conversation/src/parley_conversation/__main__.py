"""``python -m parley_conversation``: one replica, configured by environment variables."""

from __future__ import annotations

import gc

from parley_conversation.app import create_app
from parley_conversation.settings import Settings
from parley_runtime.runner import run_http


def main() -> None:
    # What the imports built (~100k objects: schemas, FastStream, pymongo...) lives as long
    # as the process: out of the collector's sight, so that each full collection under load
    # scans what the requests left, not the whole startup heap (~60 ms each on this box;
    # docs/benchmarks.md, "CPU per message:send").
    gc.collect()
    gc.freeze()
    # The lifespan's shutdown drains the batches (PARLEY_CONVERSATION_DRAIN_SECONDS).
    run_http(Settings, create_app)


if __name__ == "__main__":
    main()
