"""NATS subscriptions that cost no task and no queue: messages go straight to a function.

nats-py gives every subscription with a callback its own ``asyncio.Queue`` and its own task
(about 7 KB). A gateway holds one subscription per connected principal and one per joined
conversation, and its handlers never await (they write into socket buffers), so those hops
only cost memory and latency. :func:`subscribe_direct` creates a plain subscription (no
callback: no task) and puts in place of its pending queue a stand-in whose ``put_nowait``
calls the handler synchronously, in the order the client reads messages off the socket.

The same goes for the other direction: :func:`write_now` hands protocol commands (the
gateway's batched publishes) to the socket at once when nothing waits in the client, instead
of queueing them for nats-py's flusher task (two more loop iterations, a future and a queue
per batch); :func:`after_each_read` runs a function once per chunk the client read, after
its messages were handled (the gateway writes its clients' frames there).

This relies on nats-py internals (``Subscription._pending_queue``, used by
``Client._process_msg``; ``Client._pending``, ``_transport``, ``_ps``); pinned by uv.lock and
covered by every gateway test. If they change, :func:`subscribe_direct` falls back to an
ordinary callback subscription, :func:`write_now` to the client's queue and
:func:`after_each_read` to nothing (the caller's own schedule).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import NATS_HDR_LINE, _validate_subject
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import command as prot_command

logger = logging.getLogger(__name__)

Handler = Callable[[Msg], None]

# What ``Client.publish`` checks and does to headers (nats-py's own rules, same bytes).
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
# Beyond this many bytes waiting in the socket's buffer, writes go through nats-py's flusher,
# which waits for the buffer to drain (backpressure); a direct write never waits.
WRITE_NOW_LIMIT = 64 * 1024


class _DirectQueue:
    """Duck-types the parts of asyncio.Queue that nats-py uses on a subscription."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def put_nowait(self, msg: Msg) -> None:
        try:
            self.handler(msg)
        except Exception:
            logger.exception("handler failed for a message on %s", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None

    def __bool__(self) -> bool:
        return True


async def subscribe_direct(nc: NATS, subject: str, handler: Handler) -> Subscription:
    # pending_bytes_limit=0: nats-py counts pending bytes down only in its own task.
    sub: Subscription = await nc.subscribe(subject, pending_bytes_limit=0)
    original: Any = getattr(sub, "_pending_queue", None)
    if not isinstance(original, asyncio.Queue) or getattr(sub, "_wait_for_msgs_task", True):
        logger.warning("nats-py internals changed: using a callback subscription for %s", subject)
        await sub.unsubscribe()

        async def cb(msg: Msg) -> None:
            handler(msg)

        fallback: Subscription = await nc.subscribe(subject, cb=cb)
        return fallback
    sub._pending_queue = _DirectQueue(handler)  # type: ignore[assignment]
    sub._message_iterator = None  # it holds the original queue (and a future): let them go
    sub._pending_next_msgs_calls = None  # type: ignore[assignment]
    while not original.empty():  # anything that arrived while subscribing
        handler(original.get_nowait())
    return sub


def subscribe_later(nc: NATS, subject: str, handler: Handler) -> tuple[Subscription, bytes]:
    """A direct subscription registered with the client but not yet sent to the server.

    Returns the subscription and its ``SUB`` command, for the caller to hand to the client
    with other commands in one socket write (``Bus.command_soon``): a connect's
    subscription to its principal's events then shares the write of its presence and
    session puts instead of costing a socket write of its own. Messages are routed to
    ``handler`` from the moment the server has the ``SUB``. Raises what
    ``nc.subscribe`` raises for a closed or draining client. ``sub.unsubscribe()`` works as
    usual once the ``SUB`` is sent (``Bus.flush_publishes``).
    """
    _validate_subject(subject, strict=True)  # no whitespace or CRLF: no command injection
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining:
        raise nats.errors.ConnectionDrainingError
    nc._sid += 1
    sid = nc._sid
    sub = new_subscription(nc, sid, subject)
    sub._pending_queue = _DirectQueue(handler)  # type: ignore[assignment]
    sub._pending_next_msgs_calls = None  # type: ignore[assignment]
    nc._subs[sid] = sub
    return sub, prot_command.sub_cmd(subject, "", sid)


_PLAIN = (type(None), bool, int, float, str, bytes)
_template: dict[str, Any] | None = None


def _subscription_template() -> dict[str, Any]:
    """The attributes ``Subscription(None, 0, "", pending_bytes_limit=0)`` sets, but its
    ``asyncio.Queue`` and its dict of ``next_msg`` calls (replaced at once by the direct
    subscription); empty when any other attribute is not a plain value (nats-py changed:
    a copy would be shared) or the class keeps no ``__dict__``."""
    global _template  # noqa: PLW0603 - made once, on the first subscription
    if _template is None:
        try:
            fields = dict(vars(Subscription(None, 0, "", pending_bytes_limit=0)))
        except TypeError:  # pragma: no cover - no __dict__
            fields = {}
        fields.pop("_pending_queue", None)
        fields.pop("_pending_next_msgs_calls", None)
        plain = all(isinstance(value, _PLAIN) for value in fields.values())
        _template = fields if plain and "_id" in fields else {}
    return _template


def new_subscription(nc: NATS, sid: int, subject: str) -> Subscription:
    """``Subscription(nc, sid, subject, pending_bytes_limit=0)`` without building the
    ``asyncio.Queue`` that a direct subscription replaces at once (~2 % of a connect's
    gateway CPU: one per connected principal): the other attributes are copied from one
    made once (:func:`_subscription_template`). The caller sets the pending queue."""
    template = _subscription_template()
    if not template:
        return Subscription(nc, sid, subject, pending_bytes_limit=0)
    sub: Subscription = Subscription.__new__(Subscription)
    sub.__dict__.update(template)
    sub._conn = nc
    sub._id = sid
    sub._subject = subject
    return sub


def pub_command(nc: NATS, subject: str, payload: bytes, headers: dict[str, str] | None) -> bytes:
    """The ``PUB``/``HPUB`` command ``nc.publish(subject, payload, headers=headers)`` sends.

    Raises what ``publish`` raises for a bad subject, header key or a payload over the
    server's max payload (``nats.errors.Error``)."""
    _validate_subject(subject)
    if len(payload) > nc._max_payload:
        raise nats.errors.MaxPayloadError
    if headers is None:
        return prot_command.pub_cmd(subject, "", payload)
    hdr = bytearray(NATS_HDR_LINE)
    hdr += b"\r\n"
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise nats.errors.BadHeaderError(key)
        hdr += f"{key}: {v.strip().translate(_HEADER_VALUE_NEWLINES)}\r\n".encode()
    hdr += b"\r\n"
    return prot_command.hpub_cmd(subject, "", hdr, payload)


def _writer(nc: NATS) -> asyncio.StreamWriter | None:
    """The client's socket writer when a command written now keeps its order (connected,
    nothing queued for the flusher, the socket's buffer short), else None."""
    if not nc.is_connected or nc._pending:
        return None
    writer = getattr(nc._transport, "_io_writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return None  # another transport (WebSocket): nats-py's way
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size() > WRITE_NOW_LIMIT:
        return None
    return writer


def write_now(nc: NATS, build: Callable[[], list[bytes]]) -> bool:
    """Write the commands ``build()`` returns to the NATS socket now, in one write; False
    (nothing built, nothing written) when they must go through nats-py's queue instead:
    not connected, commands already waiting there (order), or a socket that is behind."""
    writer = _writer(nc)
    if writer is None:
        return False
    commands = build()
    if not commands:
        return True
    try:
        writer.write(commands[0] if len(commands) == 1 else b"".join(commands))
    except (OSError, RuntimeError):  # the socket just went: nats-py reconnects, as for its own
        logger.debug("direct write to NATS failed", exc_info=True)
    return True


def after_each_read(nc: NATS, after: Callable[[], None]) -> bool:
    """Call ``after()`` each time the client has handled a chunk it read from the socket (all
    the messages in it), in the same loop step. False if nats-py's parser is not there."""
    parser = getattr(nc, "_ps", None)
    parse = getattr(parser, "parse", None)
    if parse is None or not asyncio.iscoroutinefunction(parse):
        logger.warning("nats-py internals changed: no hook after each read")
        return False

    async def parse_then(data: bytes = b"") -> None:
        try:
            await parse(data)
        finally:
            after()

    parser.parse = parse_then  # type: ignore[union-attr]
    return True
