"""The chains of a connection's commands, and the sends queued in them as one request.

Commands of one connection that name the same ``conversationId`` run one after the other
(docs/protocol.md, "Pipelining"; ``conn.Pipeline``): one task per chain takes them in turn
(:func:`run_chain`). A client that sends to its conversation faster than one round trip
allows had one ``message:send`` in flight and the rest queued here, each waiting a full
round trip of its own, so a chain carried one message per group commit and its queue grew
without bound (docs/benchmarks.md, issue 16's fourth pass). Now the consecutive
``message:send``s queued behind the command in flight go, when it is answered, as ONE
batched request (``internal.SendBatchRequest`` on ``routes.send_batch_subject``, to the
owner of the conversation's partition), stored in their order, each answered to its own
command ``id`` with the envelope its own request would have had:

- each is admitted on its own (rate limit, sender kind, data; ``Commands.admit``) and keeps
  its own idempotency key, so a batch the failover sends again stores each message once;
- a bad message gets its own error; the others go on;
- only consecutive sends batch (any other command waits its turn as before), at most
  ``MAX_SEND_BATCH`` messages and ``MAX_SEND_BATCH_BYTES`` of data per request;
- nobody serving batches (an older conversation service during a rolling upgrade, or a
  partition without an owner right now: its owner killed, or moving) answers "no
  responders" at once, and the sends go one by one as before, each with the usual failover
  (to any replica); so does a batch that failed as a whole (refused, or no answer in time).
  Sent again alone, each keeps the idempotency key it had in the batch: a message the batch
  stored (its replica died before answering) is answered as stored, never stored twice.

Socket.IO clients take the same path (``Gateway.submit_frame``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_contract.internal import MAX_SEND_BATCH, MAX_SEND_BATCH_BYTES
from parley_contract.routes import Route, send_batch_subject

if TYPE_CHECKING:
    from parley_gateway.commands import Commands
    from parley_gateway.conn import Conn, Pipeline

logger = logging.getLogger(__name__)

_SEND = Event.MESSAGE_SEND.value

Queued = tuple[dict[str, Any], float]  # a client frame and when it arrived


@dataclass(slots=True)
class Command:
    """A client command past the frame checks (``Commands.admit``)."""

    cmd_id: str | int | None
    reply_event: str
    label: str  # metrics
    start: float  # perf_counter() when it arrived
    route: Route | None
    data: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # refused by the checks: its reply envelope
    key: str | None = None  # the idempotency key it went with in a batch (sent again alone)


def _is_send(frame: dict[str, Any]) -> bool:
    return frame.get("event") == _SEND


async def run_chain(
    gw: Commands, conn: Conn, pipe: Pipeline, key: str | None, queue: deque[Queued]
) -> None:
    """Run a chain's commands in turn until none is queued (``Gateway.submit_frame`` queues
    them); consecutive sends go together (``send_batch``)."""
    me = asyncio.current_task()
    try:
        while queue:
            if key is not None and len(queue) > 1 and _is_send(queue[0][0]):
                n = 1
                while n < len(queue) and n < MAX_SEND_BATCH and _is_send(queue[n][0]):
                    n += 1
                batch = [queue.popleft() for _ in range(n)]
                try:
                    await send_batch(gw, conn, key, batch)
                finally:
                    _finished(conn, pipe, n)
                continue
            frame, start = queue.popleft()
            try:
                await gw.on_command(conn, frame, start)
            finally:
                _finished(conn, pipe, 1)
    finally:
        if queue:  # cancelled (a closed connection's grace ran out): never started
            _finished(conn, pipe, len(queue))
            queue.clear()
        if pipe.chains.get(key) is queue:
            del pipe.chains[key]
        pipe.tasks.discard(me)
        if not pipe.tasks and conn.pipe is pipe:
            conn.pipe = None


def _finished(conn: Conn, pipe: Pipeline, n: int) -> None:
    conn.busy -= n
    for _ in range(n):
        pipe.slots.release()


async def send_batch(gw: Commands, conn: Conn, cid: str, batch: list[Queued]) -> None:
    """Consecutive ``message:send``s of one chain: each admitted, then as few requests as
    the caps allow, answered in the order sent; a lone one (or one too big to share) goes
    as it always did."""
    segment: list[tuple[Command, bytes]] = []  # (command, its data's JSON; b"": refused)
    size = 0
    for frame, start in batch:
        cmd = gw.admit(conn, frame, start)
        if cmd is None:
            continue  # answered (an invalid id: an error frame)
        if cmd.error is not None:
            segment.append((cmd, b""))  # answered in its turn
            continue
        try:
            data = jsonutil.dumps(cmd.data)
        except TypeError:  # not encodable (a huge int): alone, as before
            data = b""
        if not data or len(data) > MAX_SEND_BATCH_BYTES:
            await _segment(gw, conn, cid, segment)
            segment, size = [], 0
            await gw.relay(conn, cmd)
            continue
        if size + len(data) > MAX_SEND_BATCH_BYTES:
            await _segment(gw, conn, cid, segment)
            segment, size = [], 0
        segment.append((cmd, data))
        size += len(data)
    await _segment(gw, conn, cid, segment)


async def _segment(
    gw: Commands, conn: Conn, cid: str, segment: list[tuple[Command, bytes]]
) -> None:
    """The sends of a segment as one request, then every command of it answered in order
    (one by one when there is a single send, or nobody took the batch)."""
    sends = [(cmd, data) for cmd, data in segment if cmd.error is None]
    answers = await _request(gw, conn, cid, sends) if len(sends) > 1 else None
    if answers is None:
        for cmd, _ in segment:
            if cmd.error is not None:
                gw.answer(conn, cmd, cmd.error)
            else:
                await gw.relay(conn, cmd)
        return
    it = iter(answers)
    for cmd, _ in segment:
        gw.answer(conn, cmd, cmd.error if cmd.error is not None else next(it))


async def _request(
    gw: Commands, conn: Conn, cid: str, sends: list[tuple[Command, bytes]]
) -> list[dict[str, Any]] | None:
    """One envelope per send from one batched request; None: send them one by one."""
    hub = gw.hub
    items = []
    for cmd, data in sends:
        # Its own idempotency key, as Commands.dispatch gives a single send; kept for a
        # send of it alone after the batch (the same message if the batch stored it).
        cmid = cmd.data.get("clientMessageId")
        key = cmd.key = cmid if isinstance(cmid, str) and cmid else new_id("idem")
        items.append(b'{"data":' + data + b',"idempotencyKey":' + jsonutil.dumps(key) + b"}")
    body = b"".join(
        (
            b'{"principal":',
            jsonutil.dumps(conn.principal.wire()),
            b',"conversationId":',
            jsonutil.dumps(cid),
            b',"instanceId":',
            jsonutil.dumps(hub.instance_id),
            b',"items":[',
            b",".join(items),
            b"]}",
        )
    )
    gw.metrics.send_batch.observe(len(sends))
    envelope = await hub.request(send_batch_subject(cid), body, nobody_ends=True)
    if not envelope["success"]:
        # Refused whole, nobody serves it, or no answer in time: one by one with the same
        # keys (whatever the batch stored is answered as stored).
        logger.info("send batch for %s failed (%s): one by one", cid, envelope["error"]["code"])
        return None
    answers = envelope.get("data")
    results = answers.get("results") if isinstance(answers, dict) else None
    if not isinstance(results, list) or len(results) != len(sends):
        logger.error("malformed send batch reply for %s: %r", cid, str(envelope)[:200])
        results = [None] * len(sends)
    bad = envelopes.fail(ErrorCode.INTERNAL_ERROR, "malformed service reply")
    return [
        r if isinstance(r, dict) and isinstance(r.get("success"), bool) else bad for r in results
    ]
