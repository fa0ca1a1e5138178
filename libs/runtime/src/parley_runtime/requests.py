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

Conversation affinity (docs/affinity.md): a write goes to its partition's subject, which
only the partition's owner serves; with ``fallback`` (the command's plain subject, served by
every replica) an attempt answered "no responders" there (the owner died, or the partition
is moving) is sent at once to the fallback, so a request waits for no lease to expire.
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


class _Unsent(Exception):
    """An attempt that could not be published (no connection within the budget)."""


class _Attempt:
    """One publish of the request and the wait for its reply (until the deadline)."""

    def __init__(self, nc: Client, subject: str, payload: bytes, deadline: float) -> None:
        self.subject = subject
        self.sent = False  # published: it may reach a service and be applied
        self.reached_nobody = False  # answered "no responders": it reached no service
        self.task = asyncio.create_task(self._run(nc, subject, payload, deadline))

    async def _run(self, nc: Client, subject: str, payload: bytes, deadline: float) -> bytes:
        if not await _connected(nc, deadline):
            raise _Unsent()
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            self.sent = True
            msg = await nc.request(subject, payload, timeout=max(0.001, remaining))
        except nats.errors.NoRespondersError:
            self.reached_nobody = True
            raise
        except nats.errors.TimeoutError:
            raise
        except nats.errors.Error as exc:  # not published (the connection closed meanwhile)
            self.sent = False
            logger.warning("NATS request on %s failed: %r", subject, exc)
            raise _Unsent() from exc
        return bytes(msg.data)

    @property
    def maybe_applied(self) -> bool:
        """Published and never answered: it may have been applied."""
        if not self.sent or self.reached_nobody:
            return False
        return not self.task.done() or self.task.cancelled() or self.task.exception() is not None


def _unavailable_reply(reply: bytes) -> bool:
    """A SERVICE_UNAVAILABLE envelope (the service refused: nothing done by that attempt)."""
    if b"SERVICE_UNAVAILABLE" not in reply:
        return False
    try:
        body = jsonutil.loads(reply)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == "SERVICE_UNAVAILABLE"


async def request_bytes(
    nc: Client | None,
    subject: str,
    payload: bytes,
    *,
    budget: float,
    attempt_timeout: float | AttemptTimer | None = None,
    on_attempt: Callable[[str], None] | None = None,
    fallback: str | None = None,
    nobody_ends: bool = False,
) -> bytes:
    """The reply's bytes; ParleyError when nobody answered. ``on_attempt("retried")`` /
    ``("gave_up")`` counts failovers (metrics); ``("fallback")`` an attempt sent again to
    ``fallback`` at once because nobody served ``subject``. ``nobody_ends``: "no responders"
    (and no fallback) ends the request at once, SERVICE_UNAVAILABLE (TIMEOUT with
    ``outcomeUnknown`` when an earlier attempt may have been applied: its replica died with
    it), instead of asking again until the budget ends: for a caller that has another,
    idempotent way (a batch of sends nobody serves is sent one by one, with the same keys).

    While the client reconnects (its NATS node died) it waits within the budget and sends
    then. With ``attempt_timeout`` an attempt not answered in time is sent again, and the
    earlier ones **keep waiting**: the first reply to any of them is the answer (before,
    each retry dropped the reply of the attempt before it, so a service slower than the
    attempt timeout was answered ``TIMEOUT`` although it had stored the message). A
    ``SERVICE_UNAVAILABLE`` reply does not end the wait while another attempt that may have
    reached a service is unanswered. Once an attempt may have reached a service, a failure is
    ``TIMEOUT`` with ``outcomeUnknown`` — never ``SERVICE_UNAVAILABLE``, which tells the
    caller that nothing was done.
    """
    if nc is None:
        raise bus_unavailable()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + budget
    retries = attempt_timeout is not None
    timer = attempt_timeout if isinstance(attempt_timeout, AttemptTimer) else None
    if timer is not None:
        per_attempt = timer.timeout(subject, budget)
    elif isinstance(attempt_timeout, int | float):
        per_attempt = float(attempt_timeout)
    else:
        per_attempt = budget
    attempts: list[_Attempt] = []
    held: bytes | None = None  # a SERVICE_UNAVAILABLE reply, while others may still answer
    backoff = RETRY_FIRST_BACKOFF
    next_at = started
    try:
        while loop.time() < deadline and not nc.is_closed:
            if loop.time() >= next_at and (retries or not attempts):
                if attempts and not nc.is_connected:  # the last attempt waits for it already
                    next_at = loop.time() + RECONNECT_POLL_SECONDS
                else:
                    if attempts:
                        if on_attempt is not None:
                            on_attempt("retried")
                        logger.info(
                            "no answer on %s (attempt %d): retrying", subject, len(attempts)
                        )
                    attempts.append(_Attempt(nc, subject, payload, deadline))
                    next_at = loop.time() + per_attempt
                    per_attempt *= 2
            pending = {a.task: a for a in attempts if not a.task.done()}
            if not pending:
                if not retries:
                    break
                await asyncio.sleep(max(0.0, min(next_at, deadline) - loop.time()))
                continue
            wait = max(0.0, min(next_at, deadline) - loop.time()) if retries else None
            done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            ended = False
            for task in done:
                try:
                    reply = task.result()
                except nats.errors.NoRespondersError:  # nobody subscribed right now: soon again
                    if fallback is not None and pending[task].subject != fallback:
                        # No owner of the partition right now: any replica, at once.
                        if on_attempt is not None:
                            on_attempt("fallback")
                        attempts.append(_Attempt(nc, fallback, payload, deadline))
                        continue
                    if nobody_ends:
                        ended = True
                        continue
                    next_at = min(next_at, loop.time() + backoff)
                    backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
                    continue
                except (_Unsent, nats.errors.TimeoutError):
                    continue
                if _unavailable_reply(reply) and any(
                    a.sent and not a.task.done() for a in attempts
                ):
                    # Kept; the earlier attempt may still answer (its replica alive) or never
                    # (it died): another replica is asked again soon, as the caller would.
                    held = reply
                    next_at = min(next_at, loop.time() + backoff)
                    backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
                    continue
                if timer is not None and task is attempts[0].task:  # Karn: first sends only
                    timer.observe(subject, loop.time() - started)
                return reply
            if ended:
                break
    finally:
        unfinished = [a.task for a in attempts if not a.task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
    if len(attempts) > 1 and on_attempt is not None:
        on_attempt("gave_up")
    if any(a.maybe_applied for a in attempts):
        raise outcome_unknown()
    if held is not None:
        return held
    if any(a.reached_nobody for a in attempts):
        raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "service unavailable, retry")
    raise bus_unavailable()


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
    fallback: str | None = None,
) -> Any:
    """Send ``body`` (JSON) to a Parley service: the reply's ``data``, or ParleyError."""
    reply = await request_bytes(
        nc,
        subject,
        jsonutil.dumps(body),
        budget=budget,
        attempt_timeout=attempt_timeout,
        on_attempt=on_attempt,
        fallback=fallback,
    )
    return unwrap(subject, reply)
