"""The store's connection-pool listener: a cleared pool drops the cached next seqs.

pymongo clears a server's pool when it finds the server unreachable or changed; what this
replica cached about the log (:class:`~parley_conversation.log.ConversationLog`'s next seqs)
may then be behind another writer's, so it is read from the log again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymongo.monitoring import (
    ConnectionCheckedInEvent,
    ConnectionCheckedOutEvent,
    ConnectionCheckOutFailedEvent,
    ConnectionCheckOutStartedEvent,
    ConnectionClosedEvent,
    ConnectionCreatedEvent,
    ConnectionPoolListener,
    ConnectionReadyEvent,
    PoolClearedEvent,
    PoolClosedEvent,
    PoolCreatedEvent,
    PoolReadyEvent,
)

if TYPE_CHECKING:
    from parley_conversation.log import ConversationLog


class ForgetSeqsOnPoolCleared(ConnectionPoolListener):
    """pymongo's connection monitoring: the driver clears a server's pool when it finds the
    server unreachable or changed (a network error, a restart, a step-down); that drops the
    store's cached next seqs (MongoStore.forget_seqs). Connection-pool events are published
    synchronously (server events would need a running loop when the client is made)."""

    def __init__(self, store: ConversationLog) -> None:
        self._store = store

    def pool_cleared(self, event: PoolClearedEvent) -> None:
        self._store.forget_seqs()

    def pool_created(self, event: PoolCreatedEvent) -> None:
        return None

    def pool_ready(self, event: PoolReadyEvent) -> None:
        return None

    def pool_closed(self, event: PoolClosedEvent) -> None:
        return None

    def connection_created(self, event: ConnectionCreatedEvent) -> None:
        return None

    def connection_ready(self, event: ConnectionReadyEvent) -> None:
        return None

    def connection_closed(self, event: ConnectionClosedEvent) -> None:
        return None

    def connection_check_out_started(self, event: ConnectionCheckOutStartedEvent) -> None:
        return None

    def connection_check_out_failed(self, event: ConnectionCheckOutFailedEvent) -> None:
        return None

    def connection_checked_out(self, event: ConnectionCheckedOutEvent) -> None:
        return None

    def connection_checked_in(self, event: ConnectionCheckedInEvent) -> None:
        return None
