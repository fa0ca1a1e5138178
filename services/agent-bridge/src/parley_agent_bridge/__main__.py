"""``python -m parley_agent_bridge``: configured only by environment variables."""

from __future__ import annotations

from parley_agent_bridge.app import create_app
from parley_agent_bridge.config import Settings
from parley_runtime.runner import run_http


def main() -> None:
    # The lifespan's shutdown stops the bridge (PARLEY_AGENT_BRIDGE_DRAIN_SECONDS).
    run_http(Settings, create_app)


if __name__ == "__main__":
    main()
