"""The bridge's reads of one conversation go to its partition's owner, as the gateway's do.

A turn's history and the title/context's reads (housekeeping.describe) are sent where the
route table sends them (docs/affinity.md): to the owner of the conversation's partition,
whose totals are read-your-writes, and to the plain subjects at once when nobody owns it.
A real bridge on a real nats-server; the conversation service is a recording stand-in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from parley_agent_bridge.config import DEMO_AGENT_ID, Settings, load_agents
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.service import Bridge
from parley_contract import jsonutil, subjects
from parley_contract.commands import DEFAULT_TITLE
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_contract.internal import AgentTurn
from parley_contract.partitions import partition_of
from parley_contract.routes import ROUTES
from parley_devstack.servers import NatsServer

pytestmark = pytest.mark.timeout(120)

GET, HISTORY = subjects.QUERY_CONVERSATION_GET, subjects.QUERY_MESSAGES_LIST
UPDATE = ROUTES[Event.CONVERSATION_UPDATE].subject


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[tuple[Bridge, Client]]:
    """A bridge and a client of its own nats-server (no conversation service on it)."""
    server = NatsServer(tmp_path / "nats").start()
    settings = Settings(nats_url=server.url, instance_id="bridge-t", presence_conversations=0)
    b = Bridge(settings, load_agents(settings), Metrics(), demo_delay=0)
    await b.start()
    nc = await nats.connect(server.url)
    try:
        yield b, nc
    finally:
        await nc.drain()
        await b.stop()
        server.stop()


def owners(cid: str) -> dict[str, str]:
    """The owner's subject of each plain subject, for ``cid``'s partition."""
    n = partition_of(cid)
    return {
        GET: subjects.partition_query(GET, n),
        HISTORY: subjects.partition_query(HISTORY, n),
        UPDATE: subjects.partition_command(Event.CONVERSATION_UPDATE, n),
    }


async def stand_in(nc: Client, cid: str, subscribe: list[str], asked: list[str]) -> None:
    """Answers on ``subscribe`` as the conversation service would (an untitled conversation
    with one exchange), recording each request's subject in ``asked``."""
    conv = {"_id": cid, "title": DEFAULT_TITLE, "totalMessages": 2}
    items = [
        {"seq": 1, "role": "user", "messageType": "text", "content": "Weather in Paris?"},
        {"seq": 2, "role": "assistant", "messageType": "text", "content": "Sunny."},
    ]
    plain = {v: k for k, v in owners(cid).items()} | {s: s for s in owners(cid)}

    async def answer(msg: Msg) -> None:
        asked.append(msg.subject)
        data: Any = {}
        if plain[msg.subject] == GET:
            data = conv
        elif plain[msg.subject] == HISTORY:
            after = jsonutil.loads(msg.data)["data"].get("afterSeq")
            data = {"items": [] if after else items, "hasMore": False}
        await msg.respond(jsonutil.dumps({"success": True, "data": data}))

    for subject in subscribe:
        await nc.subscribe(subject, queue="conversation", cb=answer)
    await nc.flush()


async def ask_everything(b: Bridge, cid: str) -> None:
    agent = b.agents[DEMO_AGENT_ID]
    turn = AgentTurn(conversation_id=cid, agent_id=agent.id, message_id=new_id("m"), seq=1)
    history, done = await b._history(agent, turn)
    assert [m["seq"] for m in history] == [1, 2] and not done
    await b._describe(agent, cid)  # the demo agent titles an untitled conversation


async def test_a_conversations_reads_go_to_its_owner(bridge: tuple[Bridge, Client]) -> None:
    b, nc = bridge
    cid = new_id("c")
    asked: list[str] = []
    to = owners(cid)
    await stand_in(nc, cid, [*to.values(), *to], asked)  # an owner and every replica
    await ask_everything(b, cid)
    assert asked == [to[HISTORY], to[HISTORY], to[GET], to[HISTORY], to[UPDATE]]


async def test_with_no_owner_they_go_to_any_replica(bridge: tuple[Bridge, Client]) -> None:
    b, nc = bridge
    cid = new_id("c")
    asked: list[str] = []
    await stand_in(nc, cid, list(owners(cid)), asked)  # the partition is moving: no owner
    await ask_everything(b, cid)
    assert asked == [HISTORY, HISTORY, GET, HISTORY, UPDATE]
