"""A replica answers the first request sent right after start() returns, with no retry.

Its link to NATS passes every SUB 20 ms late (parley_devstack.slowlink), as a loaded machine
does now and then: before start() waited for the server to hold the subscriptions
(parley_runtime.bus.flush), such a request got "no responders". Its stop() ends the partition
leases' loop with one cancel, also when it comes with the reply of the loop's NATS request
(parley_runtime.tasks.cancellable: swallowed there on Python 3.11 before, stop() hung)."""

from __future__ import annotations

from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_conversation.service import ConversationService
from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.slowlink import SlowLink

from .conftest import settings_for, user


async def test_the_first_request_after_start_is_answered(
    nats_server: NatsServer, store_server: StoreServer, db_name: str, nc: Client
) -> None:
    body = jsonutil.dumps({"principal": user("u-first"), "data": {}})
    async with SlowLink(nats_server.host, nats_server.port, prefix=b"SUB ", delay=0.02) as link:
        for _ in range(3):
            # A short lease: the leases' loop ticks (NATS requests) while stop() cancels it.
            settings = settings_for(link.url, store_server.url, db_name, lease_seconds=1.0)
            svc = ConversationService(settings)
            await svc.start()
            try:
                msg = await nc.request(subjects.QUERY_CONVERSATIONS_LIST, body, timeout=10)
            finally:
                await svc.stop()
            reply = jsonutil.loads(msg.data)
            assert reply["success"], reply
            assert reply["data"]["items"] == []
