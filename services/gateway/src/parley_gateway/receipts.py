"""Delivery receipts: which principal's connections received a conversation's frames.

A gateway writes durable frames to sockets, so it is the one that knows a message reached a
recipient. Nothing is done per frame but marking the conversation touched (a set add in
``Hub.deliver``); once per ``delivery_report_seconds`` the reporter reads, for each touched
conversation, how far each member principal's connections got (``Conn.joined``, the
position the gateway keeps anyway) and publishes the positions that moved since its last
report, in batches, on ``subjects.INTERNAL_DELIVERY`` (no reply). The conversation service
marks the messages that reached someone other than their author ``delivered`` and sends
``message:delivered`` (docs/protocol.md 3.6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.aio.client import Client as NATS

from parley_contract import jsonutil, subjects
from parley_contract.events import PrincipalKind

if TYPE_CHECKING:
    from parley_gateway.fanout import ConvState

logger = logging.getLogger(__name__)

REPORT_CHUNK: Final = 500  # items per published report (the service takes up to 2000)
MAX_REMEMBERED: Final = 100_000  # reported positions kept; older conversations' are pruned

Key = tuple[str, PrincipalKind, str]


class DeliveryReporter:
    def __init__(self, convs: Mapping[str, ConvState], nc: Callable[[], NATS | None]) -> None:
        self._convs = convs
        self._nc = nc
        self._touched: set[str] = set()
        self._reported: dict[Key, int] = {}

    def touch(self, cid: str) -> None:
        """Frames of ``cid`` were written to some connection: report it at the next tick."""
        self._touched.add(cid)

    def pending(self) -> list[dict[str, Any]]:
        """The positions that moved since the last report (and remember them as reported)."""
        touched, self._touched = self._touched, set()
        items: list[dict[str, Any]] = []
        for cid in touched:
            conv = self._convs.get(cid)
            if conv is None:
                continue
            best: dict[tuple[PrincipalKind, str], int] = {}
            for conn in conv.members:
                p = conn.principal
                seq = conn.joined.get(cid, 0)
                if p.kind is PrincipalKind.SERVICE or seq <= 0:
                    continue
                key = (p.kind, p.id)
                if best.get(key, 0) < seq:
                    best[key] = seq
            for (kind, pid), seq in best.items():
                if self._reported.get((cid, kind, pid), 0) >= seq:
                    continue
                self._reported[(cid, kind, pid)] = seq
                items.append(
                    {"conversationId": cid, "kind": kind.value, "principalId": pid, "seq": seq}
                )
        if len(self._reported) > MAX_REMEMBERED:
            self._reported = {k: v for k, v in self._reported.items() if k[0] in self._convs}
        return items

    async def report(self) -> None:
        items = self.pending()
        nc = self._nc()
        if not items:
            return
        for i in range(0, len(items), REPORT_CHUNK):
            chunk = items[i : i + REPORT_CHUNK]
            try:
                if nc is None:
                    raise nats.errors.ConnectionClosedError
                await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps({"items": chunk}))
            except nats.errors.Error as exc:
                # Not reported: forget them as reported, so the next tick sends them again.
                logger.warning("delivery report not published (%r); retrying", exc)
                for it in items[i:]:
                    cid = it["conversationId"]
                    self._reported.pop((cid, PrincipalKind(it["kind"]), it["principalId"]), None)
                    self._touched.add(cid)
                return
