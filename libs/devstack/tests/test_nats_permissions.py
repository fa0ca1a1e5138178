"""Issue 18: least privilege on NATS. A real nats-server with the authorization block that
parley_contract.nats_auth derives from the subject registry; what each role's credentials
can and cannot do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from parley_contract import jsonutil, nats_auth, subjects
from parley_devstack.servers import NatsServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = NatsServer(Path(tmp_path_factory.mktemp("nats-auth")), auth=True).start()
    yield srv
    srv.stop()


async def _connect(url: str, role: str | None = None) -> Client:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        url,
        error_cb=on_error,
        max_reconnect_attempts=0,
        allow_reconnect=False,
        inbox_prefix=nats_auth.inbox_prefix(role) if role else "_INBOX",  # type: ignore[arg-type]
    )
    nc.parley_errors = errors  # type: ignore[attr-defined]
    return nc


@pytest.fixture
async def admin(server: NatsServer) -> AsyncIterator[Client]:
    nc = await _connect(server.url)
    js = nc.jetstream()
    for bucket in (subjects.KV_SEQUENCES, subjects.KV_SESSIONS, subjects.KV_AGENTS):
        kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        await kv.put("conv-1", b"secret")
    yield nc
    await nc.close()


async def _violation(nc: Client) -> str:
    for _ in range(50):
        errors: list[Exception] = nc.parley_errors  # type: ignore[attr-defined]
        if errors:
            return str(errors[-1])
        await asyncio.sleep(0.05)
    return ""


async def test_a_connection_without_credentials_is_refused(server: NatsServer) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(server.anonymous_url, max_reconnect_attempts=0, allow_reconnect=False)
    bad = server.url_for("gateway").replace(server.passwords["gateway"], "wrong-password")
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(bad, max_reconnect_attempts=0, allow_reconnect=False)


async def test_a_gateway_cannot_publish_a_durable_event(server: NatsServer, admin: Client) -> None:
    received: list[bytes] = []
    sub = await admin.subscribe(subjects.conversation_feed("conv-1"))
    gw = await _connect(server.url_for("gateway"), "gateway")
    forged = {"event": "message:new", "conversationId": "conv-1", "seq": 99, "data": {}}
    await gw.publish(subjects.conversation_events("conv-1"), jsonutil.dumps(forged))
    await gw.flush()
    assert "permissions violation" in (await _violation(gw)).lower()
    # The ephemeral subject is the gateway's to publish (typing); the forged seq frame a
    # gateway might put there is dropped by every gateway (test below).
    await gw.publish(subjects.conversation_ephemeral("conv-1"), b'{"event":"typing:start"}')
    await gw.flush()
    msg = await sub.next_msg(timeout=2)
    received.append(msg.data)
    assert received == [b'{"event":"typing:start"}']
    await gw.close()


async def test_a_gateway_cannot_read_another_roles_kv_bucket(
    server: NatsServer, admin: Client
) -> None:
    gw = await _connect(server.url_for("gateway"), "gateway")
    js = gw.jetstream()
    own = await js.key_value(subjects.KV_SESSIONS)
    assert (await own.get("conv-1")).value == b"secret"
    with pytest.raises((nats.errors.Error, nats.js.errors.Error)):
        kv = await js.key_value(subjects.KV_SEQUENCES)  # the conversation service's
        await kv.get("conv-1")
    # Not around JetStream's API either: the bucket's subjects.
    await gw.publish(subjects.kv_key_subject(subjects.KV_AGENTS, "agent-x.bridge-1"), b"{}")
    await gw.flush()
    assert "permissions violation" in (await _violation(gw)).lower()
    await gw.close()


async def test_a_role_cannot_listen_to_another_roles_replies_or_commands(
    server: NatsServer,
) -> None:
    gw = await _connect(server.url_for("gateway"), "gateway")
    await gw.subscribe(f"{nats_auth.inbox_prefix('agent-bridge')}.>")
    await gw.flush()
    assert "permissions violation" in (await _violation(gw)).lower()
    await gw.close()
    bridge = await _connect(server.url_for("agent-bridge"), "agent-bridge")
    await bridge.subscribe(subjects.COMMANDS_WILDCARD)  # the conversation service's
    await bridge.flush()
    assert "permissions violation" in (await _violation(bridge)).lower()
    await bridge.close()


def test_the_authorization_block_is_derived_from_the_registry() -> None:
    block = nats_auth.server_authorization({r: "pw" for r in nats_auth.ROLES})
    for role in nats_auth.ROLES:
        assert f'"user": "{role}"' in block
    gw = nats_auth.permissions("gateway")
    assert subjects.CONVERSATION_EVENTS_WILDCARD not in gw["publish"]
    assert subjects.CONVERSATION_EPHEMERAL_WILDCARD in gw["publish"]
    assert subjects.CONVERSATION_EVENTS_WILDCARD in nats_auth.permissions("conversation")["publish"]
    # Inboxes: only those of the roles whose requests a role answers (REPLIES_TO), never its
    # own nor another's.
    for role in nats_auth.ROLES:
        inboxes = [p for p in nats_auth.permissions(role)["publish"] if p.startswith("_INBOX")]
        assert inboxes == [f"{nats_auth.inbox_prefix(r)}.>" for r in nats_auth.REPLIES_TO[role]]
        assert f"{nats_auth.inbox_prefix(role)}.>" not in inboxes
    assert nats_auth.REPLIES_TO["gateway"] == ()
