"""CPU of turning a ``message:send`` request (bytes from NATS) into a validated command, in
the conversation service: before the route table (the request decoded, then its ``data``
validated a second time from the decoded dict) and now (``Route.decode``: one pass over the
bytes, the payload typed inside the request model). In-process, no NATS, no store:
``python -m bench.experiments.route_decode [iterations]``.
"""

from __future__ import annotations

import sys
import time

from parley_contract import jsonutil
from parley_contract.commands import MessageSend
from parley_contract.events import Event
from parley_contract.internal import CommandRequest
from parley_contract.routes import ROUTES

BODY = jsonutil.dumps(
    {
        "principal": {"id": "u-alice", "kind": "user", "name": "Alice"},
        "data": {
            "conversationId": "conv-0123456789abcdef",
            "content": "hello there, " * 8,
            "clientMessageId": "cm-0123456789",
            "metadata": {"source": "bench", "n": 1},
        },
        "instanceId": "gw-bench",
        "idempotencyKey": "cm-0123456789",
    }
)


def before(body: bytes) -> MessageSend:
    req = CommandRequest.model_validate_json(body)
    return MessageSend.model_validate(req.data)


def after(body: bytes) -> object:
    return ROUTES[Event.MESSAGE_SEND].decode(body).data


def per_call_us(fn: object, n: int) -> float:
    assert callable(fn)
    for _ in range(1000):
        fn(BODY)
    t = time.process_time()
    for _ in range(n):
        fn(BODY)
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for _ in range(3):  # alternated, three rounds
        b, a = per_call_us(before, n), per_call_us(after, n)
        sys.stdout.write(f"before {b:.1f} us  after {a:.1f} us  ({len(BODY)} bytes)\n")


if __name__ == "__main__":
    main()
