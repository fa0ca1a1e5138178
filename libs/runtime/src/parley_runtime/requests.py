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
replica. A reply, even an error, is never retried. An :class:`AttemptTimer` as
``attempt_timeout`` sets the first attempt's wait from the reply times seen (a slow service is
not sent everything twice). NATS failover (issue 19): while the client reconnects to another
node a request waits for it (within the budget) instead of failing at once.
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
RECONNECT_POLL_SECONDS = 0.02
TIMEOUT_MESSAGE = (
    "the service did not answer in time: the outcome is unknown (the command may or may "
    "not have been applied); sending it again with the same clientMessageId is safe"
)


def bus_unavailable() -> ParleyError:
    return ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")


def outcome_unknown() -> ParleyError:
    return ParleyError(ErrorCode.TIMEOUT, TIMEOUT_MESSAGE, {"outcomeUnknown": True})


class AttemptTimer:
    """How long an attempt waits before it is sent again, per subject, from the replies seen.

    A fixed first-attempt timeout sends a request again whenever the service is slower than
    that, not only when a replica died with it: under load (group commits of 1-2 s) every
    send was queued two or three times over, which made the service slower still. Like TCP's
    retransmission timer (RFC 6298): ``srtt + 4 * rttvar`` of the recent reply times, never
    below the configured first-attempt timeout, never above half the budget.
    """

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self._srtt: dict[str, float] = {}
        self._rttvar: dict[str, float] = {}

    def observe(self, subject: str, seconds: float) -> None:
        srtt = self._srtt.get(subject)
        if srtt is None:
            self._srtt[subject] = seconds
            self._rttvar[subject] = seconds / 2
            return
        self._rttvar[subject] = 0.75 * self._rttvar[subject] + 0.25 * abs(srtt - seconds)
        self._srtt[subject] = 0.875 * srtt + 0.125 * seconds

    def timeout(self, subject: str, budget: float) -> float:
        srtt = self._srtt.get(subject)
        estimate = 0.0 if srtt is None else srtt + 4 * self._rttvar[subject]
        return min(max(self.floor, estimate), max(self.floor, budget / 2))


async def _connected(nc: Client, until: float) -> bool:
    """Wait (until the loop time ``until``) while the client reconnects, e.g. to another
    node of the cluster after its node died: True once connected, False if closed or late."""
    loop = asyncio.get_running_loop()
    while not nc.is_connected:
        if nc.is_closed or loop.time() >= until:
            return False
        await asyncio.sleep(RECONNECT_POLL_SECONDS)
    return True


async def request_bytes(
    nc: Client | None,
    subject: str,
    payload: bytes,
    *,
    budget: float,
    attempt_timeout: float | AttemptTimer | None = None,
    on_attempt: Callable[[str], None] | None = None,
) -> bytes:
    """The reply's bytes; ParleyError when nobody answered. ``on_attempt("retried")`` /
    ``("gave_up")`` counts failovers (metrics).

    While the client reconnects (its NATS node died) it waits within the budget and sends
    then. Once an attempt may have reached a service (no reply in time, the connection lost
    with it in flight), a failure is ``TIMEOUT`` with ``outcomeUnknown`` — never
    ``SERVICE_UNAVAILABLE``, which tells the caller that nothing was done.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    timer = attempt_timeout if isinstance(attempt_timeout, AttemptTimer) else None
    retries = attempt_timeout is not None
    if timer is not None:
        per_attempt = timer.timeout(subject, budget)
    else:
        per_attempt = attempt_timeout if isinstance(attempt_timeout, float | int) else budget
    backoff = RETRY_FIRST_BACKOFF
    attempt = 0
    maybe_done = False  # an attempt may have reached a service
    while True:
        attempt += 1
        if nc is None or not await _connected(nc, deadline):
            if attempt > 1 and on_attempt is not None:
                on_attempt("gave_up")
            raise outcome_unknown() if maybe_done else bus_unavailable()
        remaining = deadline - loop.time()
        sent_at = loop.time()
        try:
            msg = await nc.request(
                subject, payload, timeout=max(0.001, min(per_attempt, remaining))
            )
            if timer is not None:
                timer.observe(subject, loop.time() - sent_at)
            return bytes(msg.data)
        except nats.errors.NoRespondersError:
            failure = (
                outcome_unknown()
                if maybe_done
                else ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "service unavailable, retry")
            )
        except nats.errors.TimeoutError:
            maybe_done = True
            failure = outcome_unknown()
        except nats.errors.Error as exc:  # e.g. the connection closed with it in flight
            logger.warning("NATS request on %s failed: %r", subject, exc)
            maybe_done = True
            failure = outcome_unknown()
            if not retries:
                raise failure from exc
        if not retries or deadline - loop.time() <= backoff:
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
    attempt_timeout: float | AttemptTimer | None = None,
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
