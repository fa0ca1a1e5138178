"""One request client for service-to-service calls: the reply's ``data``, or ParleyError.

A Parley service answers every request with an envelope (parley_contract.envelopes):
``{"success": true, "data": ...}`` or ``{"success": false, "error": {code, message,
details}}``. :func:`request` sends, waits and unwraps it; a transport failure becomes the
matching ParleyError too (no responders: SERVICE_UNAVAILABLE; no answer in time: TIMEOUT
with ``outcomeUnknown``). :func:`request_bytes` is the transport alone, for a caller that
relays the reply as it is (the gateway).

Failover (issue 11): with ``attempt_timeout`` a request nobody answered (the replica died
with it in flight, or none is subscribed right now) is sent again, the same bytes (so the
same idempotency key), each attempt waiting twice as long as the one before, with a short
capped backoff between them, all within ``budget`` seconds. A queue group hands the retry to a live
replica. A reply, even an error, is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client

from parley_contract import jsonutil
from parley_contract.errors import ErrorCode, ParleyError

logger = logging.getLogger(__name__)

RETRY_FIRST_BACKOFF = 0.05
RETRY_MAX_BACKOFF = 0.4
TIMEOUT_MESSAGE = (
    "the service did not answer in time: the outcome is unknown (the command may or may "
    "not have been applied); sending it again with the same clientMessageId is safe"
)


def bus_unavailable() -> ParleyError:
    return ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")


async def request_bytes(
    nc: Client | None,
    subject: str,
    payload: bytes,
    *,
    budget: float,
    attempt_timeout: float | None = None,
    on_attempt: Callable[[str], None] | None = None,
) -> bytes:
    """The reply's bytes; ParleyError when nobody answered. ``on_attempt("retried")`` /
    ``("gave_up")`` counts failovers (metrics)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    per_attempt = attempt_timeout or budget
    backoff = RETRY_FIRST_BACKOFF
    attempt = 0
    while True:
        attempt += 1
        if nc is None or not nc.is_connected:
            raise bus_unavailable()
        remaining = deadline - loop.time()
        try:
            msg = await nc.request(
                subject, payload, timeout=max(0.001, min(per_attempt, remaining))
            )
            return bytes(msg.data)
        except nats.errors.NoRespondersError:
            failure = ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "service unavailable, retry")
        except nats.errors.TimeoutError:
            failure = ParleyError(ErrorCode.TIMEOUT, TIMEOUT_MESSAGE, {"outcomeUnknown": True})
        except nats.errors.Error as exc:
            logger.warning("NATS request on %s failed: %r", subject, exc)
            raise bus_unavailable() from exc
        if attempt_timeout is None or deadline - loop.time() <= backoff:
            if attempt > 1 and on_attempt is not None:
                on_attempt("gave_up")
            raise failure
        if on_attempt is not None:
            on_attempt("retried")
        logger.info("no answer on %s (attempt %d): retrying", subject, attempt)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
        per_attempt *= 2


def parse_envelope(subject: str, reply: bytes) -> dict[str, Any]:
    """The reply envelope as a dict; INTERNAL_ERROR if it is not one."""
    try:
        body = jsonutil.loads(reply)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
        logger.error("malformed reply on %s: %r", subject, reply[:200])
        raise ParleyError(ErrorCode.INTERNAL_ERROR, "malformed service reply")
    return body


def unwrap(subject: str, reply: bytes) -> Any:
    """The ``data`` of a success envelope, or its error as ParleyError."""
    body = parse_envelope(subject, reply)
    if body["success"]:
        return body.get("data")
    raise error_of(body)


def error_of(envelope: dict[str, Any]) -> ParleyError:
    """The ParleyError an error envelope carries."""
    err = envelope.get("error")
    if not isinstance(err, dict):
        err = {}
    code = ErrorCode.INTERNAL_ERROR
    with contextlib.suppress(ValueError):
        code = ErrorCode(str(err.get("code")))
    details = err.get("details")
    return ParleyError(
        code,
        str(err.get("message") or "request failed"),
        details if isinstance(details, dict) else None,
    )


async def request(
    nc: Client | None,
    subject: str,
    body: dict[str, Any],
    *,
    budget: float,
    attempt_timeout: float | None = None,
    on_attempt: Callable[[str], None] | None = None,
) -> Any:
    """Send ``body`` (JSON) to a Parley service: the reply's ``data``, or ParleyError."""
    reply = await request_bytes(
        nc,
        subject,
        jsonutil.dumps(body),
        budget=budget,
        attempt_timeout=attempt_timeout,
        on_attempt=on_attempt,
    )
    return unwrap(subject, reply)
