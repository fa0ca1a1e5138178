"""``python -m parley_gateway``: one gateway instance, configured by environment variables."""

from __future__ import annotations

import logging

import uvloop

from parley_gateway.server import serve_forever
from parley_gateway.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [" + settings.instance_id + "] %(message)s",
    )
    # websockets logs every connection and every HTTP response at INFO.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        settings.check()
    except ValueError as exc:
        logging.getLogger(__name__).error("refusing to start: %s", exc)
        raise SystemExit(2) from None
    uvloop.run(serve_forever(settings))


if __name__ == "__main__":
    main()
