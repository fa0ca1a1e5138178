"""Conversation affinity: which partition a conversation belongs to (docs/affinity.md).

Every conversation hashes to one of :data:`PARTITIONS` partitions; one conversation-service
replica at a time owns a partition (a lease in the ``subjects.KV_PARTITIONS`` bucket) and is
the only one subscribed to its command subjects (``subjects.partition_commands``), so each
conversation's seqs are handed out by one replica's cache. Gateways and the agent bridge
compute the partition here, from the command's ``conversationId``, and send to that
partition's subject (``Route.subject_for``): no extra hop, no lookup of the owner.

The count and the hash are part of the contract: every gateway, bridge and replica of a
deployment must agree on them (changing them is a coordinated restart).
"""

from __future__ import annotations

import zlib
from typing import Final

PARTITIONS: Final = 64

# Keys of the partitions bucket: one lease per partition, one heartbeat per replica.
LEASE_PREFIX: Final = "p"
MEMBER_PREFIX: Final = "m"


def partition_of(conversation_id: str) -> int:
    """The partition of a conversation: CRC-32 of its id (stable across processes and
    languages, unlike Python's salted ``hash``) modulo :data:`PARTITIONS`."""
    return zlib.crc32(conversation_id.encode("utf-8", "surrogatepass")) % PARTITIONS


def lease_key(partition: int) -> str:
    """The KV key of a partition's lease (value: the owning replica's instance id)."""
    return f"{LEASE_PREFIX}.{partition}"


def member_key(instance_id: str) -> str:
    """The KV key of a replica's heartbeat (its presence decides the fair share)."""
    return f"{MEMBER_PREFIX}.{instance_id}"


def partition_of_lease_key(key: str) -> int | None:
    """The partition a lease key names, or None for any other key."""
    head, _, tail = key.partition(".")
    if head != LEASE_PREFIX or not tail.isdigit():
        return None
    n = int(tail)
    return n if n < PARTITIONS else None


def instance_of_member_key(key: str) -> str | None:
    head, _, tail = key.partition(".")
    return tail if head == MEMBER_PREFIX and tail else None
