"""A narrow stand-in for the conversation service on a real nats-server (the gateway's
unit tests only; the acceptance tests use the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

from parley_contract import jsonutil


class FakeConversationService:
    """A narrow stand-in for the conversation service (unit tests of the gateway only).

    The acceptance tests use the real one (``python -m parley_conversation``).
    """

    def __init__(self, nats_url: str, *, batches: bool = True) -> None:
        self.nats_url = nats_url
        # Batched sends served (routes.send_batch_subject); False: subscribed as a service
        # from before them is (no responder for a batch), and the sizes of those it served.
        self.batches = batches
        self.batch_sizes: list[int] = []
        self.swallow_batches = False  # a batch never answered (its replica died with it)
        self.batch_keys: list[str] = []  # the idempotency keys of the batches' items
        self.send_keys: list[str] = []  # and of the single message:sends
        self.convs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.drop_publish: set[int] = set()  # seqs not published live (gap tests)
        self.rejoin_delay = 0.0  # seconds before a batched rejoin is answered (a slow service)
        self.nc: Any = None

    async def start(self) -> FakeConversationService:
        import nats

        from parley_contract import subjects
        from parley_contract.partitions import PARTITIONS
        from parley_contract.routes import REJOIN_SUBJECT, ROUTES

        self.nc = await nats.connect(self.nats_url)
        if self.batches:
            await self.nc.subscribe(subjects.COMMANDS_WILDCARD, cb=self._on_cmd)
        else:  # as a conversation service from before batched sends subscribes
            for route in ROUTES.values():
                await self.nc.subscribe(route.subject, cb=self._on_cmd)
            for n in range(PARTITIONS):
                await self.nc.subscribe(subjects.partition_commands(n), cb=self._on_cmd)
            await self.nc.subscribe(REJOIN_SUBJECT, cb=self._on_cmd)
        await self.nc.subscribe(subjects.QUERY_CONVERSATIONS_WILDCARD, cb=self._on_query)
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        await self.nc.close()

    async def _reply(self, msg: Any, env: dict[str, Any]) -> None:
        await msg.respond(jsonutil.dumps(env))

    async def _on_cmd(self, msg: Any) -> None:
        from parley_contract import envelopes, subjects
        from parley_contract.errors import ErrorCode, ParleyError
        from parley_contract.events import Event
        from parley_contract.routes import (
            REJOIN_SUBJECT,
            ROUTES,
            batch_route_of_subject,
            route_of_subject,
        )

        if batch_route_of_subject(msg.subject) is not None:  # one envelope per item
            req = jsonutil.loads(msg.data)
            self.batch_sizes.append(len(req["items"]))
            self.batch_keys.extend(item["idempotencyKey"] for item in req["items"])
            if self.swallow_batches:
                return
            results = []
            for item in req["items"]:
                try:
                    ROUTES[Event.MESSAGE_SEND].parse(item["data"])
                except ParleyError as exc:
                    results.append(envelopes.fail_from(exc))
                    continue
                results.append(await self._send(req["principal"], item["data"]))
            await self._reply(msg, envelopes.ok({"results": results}))
            return
        # Validated as the real service does: the route's request, decoded once. A write
        # arrives on its conversation's partition subject (docs/affinity.md).
        route = route_of_subject(msg.subject)
        subj = route.subject if route is not None else msg.subject
        if route is not None:
            try:
                route.decode(msg.data)
            except ParleyError as exc:
                await self._reply(msg, envelopes.fail_from(exc))
                return
        req = jsonutil.loads(msg.data)
        if subj == REJOIN_SUBJECT:  # the batched rejoin: one answer per principal
            await asyncio.sleep(self.rejoin_delay)
            conv = self.convs.get(req["conversationId"])
            members = [
                {"ok": True}
                if conv is not None and p["id"] in conv["parts"]
                else {"ok": False, "error": {"code": "FORBIDDEN", "message": "not a participant"}}
                for p in req["principals"]
            ]
            last = len(self.events.get(req["conversationId"], []))
            data = {"conversation": {"_id": req["conversationId"]}, "lastSeq": last}
            await self._reply(msg, envelopes.ok({**data, "members": members}))
            return
        p = req["principal"]
        data = req["data"]
        if subj == subjects.command(Event.CONVERSATION_CREATE):
            cid = data.get("conversationId") or f"conv-{len(self.convs) + 1}"
            parts = {p["id"]} | {
                x if isinstance(x, str) else x["id"] for x in data.get("participants", [])
            }
            self.convs[cid] = {"_id": cid, "title": data.get("title", "t"), "parts": parts}
            self.events[cid] = []
            await self._reply(msg, envelopes.ok({"_id": cid, "title": data.get("title")}))
            return
        if subj == subjects.command(Event.MESSAGE_SEND):
            self.send_keys.append(req["idempotencyKey"])
            await self._reply(msg, await self._send(p, data))
            return
        cid = data.get("conversationId")
        conv = self.convs.get(cid)
        if conv is None or p["id"] not in conv["parts"]:
            await self._reply(msg, envelopes.fail(ErrorCode.FORBIDDEN, "not a participant"))
            return
        if subj == subjects.command(Event.CONVERSATION_JOIN):
            await self._reply(
                msg,
                envelopes.ok({"conversation": {"_id": cid}, "lastSeq": len(self.events[cid])}),
            )
        else:
            await self._reply(msg, envelopes.ok(None))

    async def _send(self, p: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """A message:send's envelope (stored and published when the sender may post)."""
        from parley_contract import envelopes, subjects
        from parley_contract.errors import ErrorCode
        from parley_contract.events import Event

        cid = str(data.get("conversationId"))
        conv = self.convs.get(cid)
        if conv is None or p["id"] not in conv["parts"]:
            return envelopes.fail(ErrorCode.FORBIDDEN, "not a participant")
        seq = len(self.events[cid]) + 1
        message = {
            "_id": f"m-{seq}",
            "conversationId": cid,
            "content": data["content"],
            "seq": seq,
            "createdBy": p["id"],
        }
        frame = envelopes.event_frame(Event.MESSAGE_NEW, message, conversation_id=cid, seq=seq)
        self.events[cid].append(frame)
        if seq not in self.drop_publish:
            # As the real service: seq and epoch in headers too (subjects.durable_headers).
            headers = subjects.durable_headers(cid, seq, 0, Event.MESSAGE_NEW.value)
            await self.nc.publish(
                subjects.conversation_events(cid), jsonutil.dumps(frame), headers=headers
            )
        return envelopes.ok(message)

    async def _on_query(self, msg: Any) -> None:
        from parley_contract import envelopes, subjects

        req = jsonutil.loads(msg.data)
        if msg.subject == subjects.QUERY_EVENTS_SINCE:
            cid = req["conversationId"]
            after, until = req["afterSeq"], req.get("untilSeq")
            evs = [
                f
                for f in self.events.get(cid, [])
                if f["seq"] > after and (until is None or f["seq"] <= until)
            ][: req.get("limit", 500)]
            if len(jsonutil.dumps(evs)) > 900_000:  # over NATS max payload: never answered
                return
            await self._reply(
                msg, envelopes.ok({"events": evs, "lastSeq": len(self.events.get(cid, []))})
            )
        elif msg.subject == subjects.QUERY_CONVERSATION_GET:
            from parley_contract.errors import ErrorCode

            conv = self.convs.get(req["data"]["conversationId"])
            if conv is None or req["principal"]["id"] not in conv["parts"]:
                await self._reply(msg, envelopes.fail(ErrorCode.FORBIDDEN, "not a participant"))
            else:
                await self._reply(msg, envelopes.ok({"_id": conv["_id"]}))
        else:
            await self._reply(msg, envelopes.ok({"items": [], "q": req["data"]}))
