"""The delivery reporter's bookkeeping (receipts.py), no network: what it reports, once, and
again after a failed publish."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors

from parley_contract import subjects
from parley_contract.events import PrincipalKind
from parley_contract.internal import DeliveryReport, Principal
from parley_gateway.receipts import DeliveryReporter


class FakeConn:
    def __init__(self, principal: Principal, joined: dict[str, int]) -> None:
        self.principal = principal
        self.joined = joined


def conn(pid: str, joined: dict[str, int], kind: PrincipalKind = PrincipalKind.USER) -> Any:
    return FakeConn(Principal(id=pid, kind=kind), joined)


class FakeNats:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False

    async def publish(self, subject: str, body: bytes) -> None:
        if self.fail:
            raise nats.errors.ConnectionClosedError
        self.sent.append((subject, body))


def items(nc: FakeNats) -> list[tuple[str, str, int]]:
    out = []
    for subject, body in nc.sent:
        assert subject == subjects.INTERNAL_DELIVERY
        report = DeliveryReport.model_validate_json(body)  # what the service parses
        out += [(i.conversation_id, i.principal_id, i.seq) for i in report.items]
    nc.sent.clear()
    return sorted(out)


async def test_reports_the_highest_position_per_principal_once() -> None:
    bob1, bob2 = conn("bob", {"c1": 5}), conn("bob", {"c1": 7})
    svc = conn("gw", {"c1": 9}, PrincipalKind.SERVICE)
    convs: dict[str, Any] = {
        "c1": SimpleNamespace(members={bob1, bob2, conn("ann", {"c1": 3}), svc})
    }
    nc = FakeNats()
    reporter = DeliveryReporter(convs, lambda: nc)  # type: ignore[arg-type, return-value]
    await reporter.report()
    assert items(nc) == [], "nothing touched, nothing reported"
    reporter.touch("c1")
    reporter.touch("gone")  # a conversation no longer followed here
    await reporter.report()
    assert items(nc) == [("c1", "ann", 3), ("c1", "bob", 7)]
    reporter.touch("c1")
    await reporter.report()
    assert items(nc) == [], "positions already reported are not sent again"
    bob1.joined["c1"] = 8
    reporter.touch("c1")
    await reporter.report()
    assert items(nc) == [("c1", "bob", 8)]


async def test_a_failed_publish_is_reported_again() -> None:
    ann = conn("ann", {"c1": 4})
    convs: dict[str, Any] = {"c1": SimpleNamespace(members={ann})}
    nc = FakeNats()
    reporter = DeliveryReporter(convs, lambda: nc)  # type: ignore[arg-type, return-value]
    nc.fail = True
    reporter.touch("c1")
    await reporter.report()
    nc.fail = False
    await reporter.report()
    assert items(nc) == [("c1", "ann", 4)]
