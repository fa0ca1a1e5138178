"""Reply size: how much of a page fits in one bus reply."""

from __future__ import annotations

from typing import Any

from parley_contract.errors import ErrorCode, ParleyError


def cap_page(
    items: list[Any], sizes: list[int], budget: int, hard_max: int, *, keep_end: bool = False
) -> tuple[list[Any], bool]:
    """The longest run of ``items`` whose ``sizes`` add up to at most ``budget`` bytes.

    From the start (``keep_end=False``: ascending pages cut their newest tail) or from the end
    (``keep_end=True``: "the latest N" pages cut their oldest head). Always at least one item
    as long as it fits in ``hard_max`` (the bus's max payload minus the envelope); a single
    item larger than that cannot be sent at all: ``PAYLOAD_TOO_LARGE`` (``details.index``).
    Returns the kept items (in their original order) and whether any were cut.
    """
    if not items:
        return [], False
    order = range(len(items) - 1, -1, -1) if keep_end else range(len(items))
    kept: list[int] = []
    total = 0
    for i in order:
        size = sizes[i]
        if not kept:
            if size > hard_max:
                raise ParleyError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"one item is {size} bytes, over the {hard_max}-byte reply limit",
                    {"index": i, "bytes": size, "maxBytes": hard_max},
                )
        elif total + size > budget:
            break
        kept.append(i)
        total += size
    if keep_end:
        kept.reverse()
    return [items[i] for i in kept], len(kept) < len(items)
