"""``python -m parley_conversation``: one replica, configured by environment variables."""

from __future__ import annotations

from parley_conversation.app import create_app
from parley_conversation.settings import Settings
from parley_runtime.runner import run_http


def main() -> None:
    # The lifespan's shutdown drains the batches (PARLEY_CONVERSATION_DRAIN_SECONDS).
    run_http(Settings, create_app)


if __name__ == "__main__":
    main()
