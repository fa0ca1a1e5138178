"""Issue 12, finding 2: a principal is (kind, id) everywhere.

An attacker holds an ordinary token whose ``sub`` equals someone of the other kind: a user
token with ``sub=<an agent's id>``, an agent token with ``sub=<a user's id>``. Real gateways
(two), the real conversation service, NATS and the store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from parley_contract import jsonutil
from parley_contract.events import PrincipalKind
from parley_devstack.stack import Stack

from .conftest import http_get, token, uid

AGENT = PrincipalKind.AGENT


def _notes(client: Any, cid: str) -> list[dict[str, Any]]:
    return [
        f
        for f in client.frames
        if f.get("event") in ("conversation:created", "conversation:updated")
        and f.get("conversationId") == cid
    ]


async def _refused(client: Any, event: str, data: dict[str, Any]) -> None:
    r = await client.cmd(event, data)
    assert not r["success"] and r["error"]["code"] == "FORBIDDEN", (event, r)


async def test_user_token_with_an_agents_id_is_not_that_agent(stack: Stack, clients: Any) -> None:
    alice_id, x = uid("alice"), uid("agent-demo")
    alice = await clients(stack.ws_url(0), alice_id)
    # The impostor: a user token with sub = the agent's id, on both gateways; on gateway 1
    # it shares the instance with the real agent (one registry per instance).
    fake0 = await clients(stack.ws_url(0), x)
    fake1 = await clients(stack.ws_url(1), x)
    agent = await clients(stack.ws_url(1), x, AGENT)
    # A user connection with that id that comes and goes on the agent's instance must not
    # take the agent's notification subscription with it.
    passer = await clients(stack.ws_url(1), x)
    await passer.close()
    await asyncio.sleep(0.2)

    r = await alice.cmd(
        "conversation:create",
        {"title": "secret plans", "participants": [{"id": x, "kind": "agent"}]},
    )
    assert r["success"], r
    cid = r["data"]["_id"]
    await agent.wait_for(lambda f: f.get("event") == "conversation:created")
    assert (await agent.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await agent.cmd("message:send", {"conversationId": cid, "content": "agent here"})
    assert r["success"] and r["data"]["role"] == "assistant", r
    agent_msg = r["data"]["_id"]

    for fake in (fake0, fake1):
        await _refused(fake, "conversation:join", {"conversationId": cid})
        await _refused(fake, "message:send", {"conversationId": cid, "content": "I am the agent"})
        await _refused(fake, "typing:start", {"conversationId": cid})
        await _refused(
            fake, "message:edit", {"conversationId": cid, "messageId": agent_msg, "content": "x"}
        )
        await _refused(fake, "conversation:update", {"conversationId": cid, "title": "mine"})
    status, body, _ = await asyncio.to_thread(
        http_get, f"{stack.gateway_url(0)}/v1/conversations/{cid}", token(x)
    )
    assert status == 403, body
    status, body, _ = await asyncio.to_thread(
        http_get, f"{stack.gateway_url(1)}/v1/conversations/{cid}/messages", token(x)
    )
    assert status == 403, body
    status, body, _ = await asyncio.to_thread(
        http_get, f"{stack.gateway_url(0)}/v1/conversations", token(x)
    )
    assert status == 200 and cid not in body.decode(), body

    # A second notification (the agent added to another conversation) after the user
    # connection on its instance left: the agent still gets it, the impostors never.
    r = await alice.cmd(
        "conversation:create", {"title": "more", "participants": [{"id": x, "kind": "agent"}]}
    )
    cid2 = r["data"]["_id"]
    await agent.wait_for(lambda f: f.get("conversationId") == cid2)
    await asyncio.sleep(0.3)
    for fake in (fake0, fake1):
        assert not _notes(fake, cid) and not _notes(fake, cid2), fake.frames


async def test_agent_token_with_a_users_id_is_not_that_user(stack: Stack, clients: Any) -> None:
    alice_id, bob_id = uid("alice"), uid("bob")
    alice = await clients(stack.ws_url(0), alice_id)
    bob = await clients(stack.ws_url(1), bob_id)
    fake = await clients(stack.ws_url(1), bob_id, AGENT)
    r = await alice.cmd("conversation:create", {"title": "t", "participants": [bob_id]})
    cid = r["data"]["_id"]
    await bob.wait_for(lambda f: f.get("event") == "conversation:created")
    for c in (alice, bob):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await bob.cmd("message:send", {"conversationId": cid, "content": "bob's"})
    bob_msg = r["data"]["_id"]
    await _refused(fake, "conversation:join", {"conversationId": cid})
    await _refused(fake, "message:send", {"conversationId": cid, "content": "as bob"})
    await _refused(fake, "message:delete", {"conversationId": cid, "messageId": bob_msg})
    await asyncio.sleep(0.3)
    assert not _notes(fake, cid), fake.frames


async def test_user_and_agent_with_one_id_in_one_conversation(stack: Stack, clients: Any) -> None:
    """Both are participants; each acts only as itself, and removing one keeps the other."""
    alice_id, x = uid("alice"), uid("twin")
    alice = await clients(stack.ws_url(0), alice_id)
    user_x = await clients(stack.ws_url(0), x)
    agent_x = await clients(stack.ws_url(1), x, AGENT)
    r = await alice.cmd(
        "conversation:create",
        {"title": "t", "participants": [x, {"id": x, "kind": "agent"}]},
    )
    assert r["success"], r
    cid = r["data"]["_id"]
    parts = {(p.get("userId"), p.get("agentId")) for p in r["data"]["participants"]}
    assert (x, None) in parts and (None, x) in parts  # two participants, not one
    for c in (alice, user_x, agent_x):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await agent_x.cmd("message:send", {"conversationId": cid, "content": "from the agent"})
    agent_msg = r["data"]["_id"]
    r = await user_x.cmd("message:send", {"conversationId": cid, "content": "from the user"})
    user_msg = r["data"]["_id"]
    # Same id, other kind: not the author.
    await _refused(
        user_x, "message:edit", {"conversationId": cid, "messageId": agent_msg, "content": "y"}
    )
    await _refused(agent_x, "message:delete", {"conversationId": cid, "messageId": user_msg})
    # Each its own: fine.
    r = await user_x.cmd(
        "message:edit", {"conversationId": cid, "messageId": user_msg, "content": "edited"}
    )
    assert r["success"], r

    # Removing the user x (a bare id is a user) leaves the agent x in, live.
    r = await alice.cmd("conversation:update", {"conversationId": cid, "removeParticipants": [x]})
    assert r["success"], r
    left = {(p.get("userId"), p.get("agentId")): p.get("leftAt") for p in r["data"]["participants"]}
    assert left[(x, None)] and not left[(None, x)]
    r = await alice.cmd("message:send", {"conversationId": cid, "content": "still there?"})
    await agent_x.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    await asyncio.sleep(0.3)
    assert not [f for f in user_x.frames if f.get("seq") == r["data"]["seq"]]
    await _refused(user_x, "typing:start", {"conversationId": cid})
    assert (await agent_x.cmd("typing:start", {"conversationId": cid}))["success"]
    # And the agent x is removed by kind.
    r = await alice.cmd(
        "conversation:update",
        {"conversationId": cid, "removeParticipants": [{"id": x, "kind": "agent"}]},
    )
    assert r["success"], r
    await _refused(agent_x, "typing:start", {"conversationId": cid})
    status, body, _ = await asyncio.to_thread(
        http_get, f"{stack.gateway_url(1)}/v1/conversations/{cid}", token(x, AGENT)
    )
    assert status == 403, body
    assert jsonutil.loads(body)["error"]["code"] == "FORBIDDEN"
