"""The one request client (parley_runtime.requests) against a real nats-server: data, or
ParleyError for an error reply, a malformed one, nobody listening, no answer in time; the
failover to another responder when the first one swallows the request (and the outcome
unknown when none is left); the attempt timer; a request through a NATS node failover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.ids import new_id
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import NatsServer
from parley_runtime import requests


async def _answer(nc: Client, subject: str, reply: bytes) -> None:
    async def handler(msg: Msg) -> None:
        await msg.respond(reply)

    await nc.subscribe(subject, cb=handler)


async def test_data_of_a_success_reply(nc: Client) -> None:
    subject = f"rt.{new_id('s')}"
    await _answer(nc, subject, jsonutil.dumps(envelopes.ok({"x": 1})))
    assert await requests.request(nc, subject, {"q": 1}, budget=5) == {"x": 1}


async def test_an_error_reply_is_raised_with_its_code_and_details(nc: Client) -> None:
    subject = f"rt.{new_id('s')}"
    reply = envelopes.fail(ErrorCode.FORBIDDEN, "not yours", {"field": "id"})
    await _answer(nc, subject, jsonutil.dumps(reply))
    with pytest.raises(ParleyError) as caught:
        await requests.request(nc, subject, {}, budget=5)
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert caught.value.message == "not yours" and caught.value.details == {"field": "id"}


@pytest.mark.parametrize("reply", [b"not json", b"[1]", b'{"success": "yes"}'])
async def test_a_malformed_reply_is_an_internal_error(nc: Client, reply: bytes) -> None:
    subject = f"rt.{new_id('s')}"
    await _answer(nc, subject, reply)
    with pytest.raises(ParleyError) as caught:
        await requests.request(nc, subject, {}, budget=5)
    assert caught.value.code is ErrorCode.INTERNAL_ERROR


async def test_nobody_listening_and_no_answer(nc: Client) -> None:
    with pytest.raises(ParleyError) as caught:
        await requests.request(nc, f"rt.{new_id('s')}", {}, budget=2)
    assert caught.value.code is ErrorCode.SERVICE_UNAVAILABLE

    subject = f"rt.{new_id('s')}"
    await nc.subscribe(subject, cb=_ignore)  # takes it, never answers
    with pytest.raises(ParleyError) as caught:
        await requests.request(nc, subject, {}, budget=0.3)
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.details == {"outcomeUnknown": True}


async def _ignore(_msg: Msg) -> None:
    return None


async def test_failover_sends_the_same_bytes_again_to_another_responder(
    nc: Client, nats_server: NatsServer
) -> None:
    subject = f"rt.{new_id('s')}"
    seen: list[bytes] = []
    swallower = await nats.connect(nats_server.url)

    async def swallow(msg: Msg) -> None:
        seen.append(msg.data)
        await swallower.close()  # "dies" with the request in flight

    await swallower.subscribe(subject, queue="q", cb=swallow)
    await swallower.flush()
    outcomes: list[str] = []
    # Only the swallower is subscribed for the first attempt; the healthy one comes after.
    healthy = await nats.connect(nats_server.url)
    try:

        async def answer(msg: Msg) -> None:
            seen.append(msg.data)
            await msg.respond(jsonutil.dumps(envelopes.ok("done")))

        async def late_subscribe() -> None:
            await asyncio.sleep(0.1)  # after the first attempt went to the swallower
            await healthy.subscribe(subject, queue="q", cb=answer)
            await healthy.flush()

        subscribing = asyncio.create_task(late_subscribe())
        data = await requests.request(
            nc, subject, {"k": "v"}, budget=5, attempt_timeout=0.3, on_attempt=outcomes.append
        )
        assert data == "done"
        assert len(seen) >= 2 and len(set(seen)) == 1  # the same bytes each time
        assert "retried" in outcomes
        await subscribing
    finally:
        await healthy.close()


async def test_after_an_attempt_that_may_have_been_applied_the_failure_is_outcome_unknown(
    nc: Client, nats_server: NatsServer
) -> None:
    # The only responder takes the request and dies with it; the retry finds nobody. Before,
    # that was SERVICE_UNAVAILABLE, which tells a client that nothing was stored.
    subject = f"rt.{new_id('s')}"
    swallower = await nats.connect(nats_server.url)

    async def swallow(_msg: Msg) -> None:
        await swallower.close()

    await swallower.subscribe(subject, queue="q", cb=swallow)
    await swallower.flush()
    with pytest.raises(ParleyError) as caught:
        await requests.request(nc, subject, {}, budget=1.5, attempt_timeout=0.2)
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.details == {"outcomeUnknown": True}


def test_the_attempt_timer_follows_a_slow_service_and_comes_back() -> None:
    timer = requests.AttemptTimer(0.75)
    assert timer.timeout("s", budget=5) == 0.75  # nothing seen yet: the floor
    for _ in range(20):
        timer.observe("s", 0.05)
    assert timer.timeout("s", budget=5) == 0.75  # fast replies: the floor
    for _ in range(20):
        timer.observe("s", 1.5)  # group commits of 1.5 s: not sent twice after 0.75 s
    assert 1.5 < timer.timeout("s", budget=5) <= 2.5  # at most half the budget
    assert timer.timeout("other", budget=5) == 0.75  # per subject
    for _ in range(60):
        timer.observe("s", 0.05)
    assert timer.timeout("s", budget=5) == 0.75


async def test_a_request_waits_for_the_failover_to_another_node(tmp_path: Path) -> None:
    # The client's node dies: the request waits while it reconnects to another node and is
    # answered there; before, it failed at once ("message bus unavailable").
    cluster = NatsCluster(tmp_path / "nats").start()
    try:
        first, second = cluster.nodes[0], cluster.nodes[1]
        lost = asyncio.Event()

        async def disconnected() -> None:
            lost.set()

        client = await nats.connect(
            cluster.urls(nodes=[first, second]).split(","), disconnected_cb=disconnected
        )
        responder = await nats.connect(cluster.urls(nodes=[cluster.nodes[2]]).split(","))
        subject = f"rt.{new_id('s')}"
        try:
            await _answer(responder, subject, jsonutil.dumps(envelopes.ok("here")))
            await responder.flush()
            port = client.connected_url.port if client.connected_url else None
            cluster.kill(first if port == first.port else second)
            await asyncio.wait_for(lost.wait(), 10)  # the client noticed: reconnecting
            data = await requests.request(nc=client, subject=subject, body={}, budget=5)
            assert data == "here"
        finally:
            await client.close()
            await responder.close()
    finally:
        cluster.stop()


async def test_a_slow_reply_to_an_earlier_attempt_is_the_answer(
    nc: Client, nats_server: NatsServer
) -> None:
    # A service slower than the attempt timeout (a long group commit): the gateway sends
    # again, and the first attempt's reply still counts. Before, each retry dropped the reply
    # of the attempt before it and the caller got TIMEOUT although the service had done it.
    subject = f"rt.{new_id('s')}"
    seen: list[bytes] = []
    slow = await nats.connect(nats_server.url)

    async def answer_late(msg: Msg) -> None:
        seen.append(msg.data)
        await asyncio.sleep(0.5)  # one at a time: the second attempt waits behind the first
        await msg.respond(jsonutil.dumps(envelopes.ok(len(seen))))

    try:
        await slow.subscribe(subject, cb=answer_late)
        await slow.flush()
        data = await requests.request(nc, subject, {}, budget=1.0, attempt_timeout=0.2)
        assert data == 1  # the first attempt's reply
        assert len(seen) >= 2  # it was sent again meanwhile
    finally:
        await slow.close()


async def test_a_refusal_waits_for_an_earlier_attempt_still_in_flight(
    nc: Client, nats_server: NatsServer
) -> None:
    # The first attempt is being handled (slowly) by one replica; the retry reaches another
    # that refuses at once (SERVICE_UNAVAILABLE: "not stored"). Relaying that refusal would
    # tell the client nothing was stored while the first replica stores it.
    subject = f"rt.{new_id('s')}"
    slow = await nats.connect(nats_server.url)
    refuser = await nats.connect(nats_server.url)
    taken: list[Msg] = []
    first = asyncio.Event()

    async def take(msg: Msg) -> None:
        taken.append(msg)
        first.set()

    async def refuse(msg: Msg) -> None:
        await msg.respond(jsonutil.dumps(envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "busy")))

    async def replicas() -> None:
        await first.wait()
        await sub.unsubscribe()  # the retry goes to the refuser
        await slow.flush()
        await refuser.subscribe(subject, queue="q", cb=refuse)
        await refuser.flush()
        await asyncio.sleep(0.6)
        await taken[0].respond(jsonutil.dumps(envelopes.ok("stored")))

    try:
        sub = await slow.subscribe(subject, queue="q", cb=take)
        await slow.flush()
        running = asyncio.create_task(replicas())
        data = await requests.request(nc, subject, {}, budget=2.0, attempt_timeout=0.2)
        assert data == "stored"
        await running
    finally:
        await slow.close()
        await refuser.close()


async def test_after_a_refusal_it_asks_again_while_the_first_attempt_stays_unanswered(
    nc: Client, nats_server: NatsServer
) -> None:
    # The first attempt's replica died with it; the retry is refused (overloaded); another
    # goes out soon after and is answered. Before, the next one waited for the doubling
    # schedule and the budget ended first (TIMEOUT).
    subject = f"rt.{new_id('s')}"
    dying = await nats.connect(nats_server.url)
    busy = await nats.connect(nats_server.url)
    first = asyncio.Event()
    seen: list[bytes] = []

    async def swallow(_msg: Msg) -> None:
        first.set()

    async def refuse_once(msg: Msg) -> None:
        seen.append(msg.data)
        if len(seen) == 1:
            reply = envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "busy")
        else:
            reply = envelopes.ok("done")
        await msg.respond(jsonutil.dumps(reply))

    async def replicas() -> None:
        await first.wait()
        await dying.close()  # dies with the first attempt
        await busy.subscribe(subject, queue="q", cb=refuse_once)
        await busy.flush()

    try:
        await dying.subscribe(subject, queue="q", cb=swallow)
        await dying.flush()
        running = asyncio.create_task(replicas())
        # Resent after 1 s (refused), then 2 s later by the schedule alone: past the budget.
        data = await requests.request(nc, subject, {}, budget=2.5, attempt_timeout=1.0)
        assert data == "done"
        assert len(seen) >= 2
        await running
    finally:
        await busy.close()


async def test_nobody_ends_gives_up_at_the_first_no_responders(nc: Client) -> None:
    """``nobody_ends`` (a batch the caller can send another way): "no responders" ends the
    request with SERVICE_UNAVAILABLE after one attempt, with failover on; without it the
    request asks again until the budget ends."""
    outcomes: list[str] = []
    with pytest.raises(ParleyError) as caught:
        await requests.request_bytes(
            nc,
            f"rt.{new_id('s')}",
            b"{}",
            budget=60,
            attempt_timeout=0.2,
            on_attempt=outcomes.append,
            nobody_ends=True,
        )
    assert caught.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert outcomes == []  # never sent again
