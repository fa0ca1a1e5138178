"""In-order, gap-free, duplicate-free delivery of one conversation's durable events.

Plain logic, no network: the hub feeds it the frames NATS delivers (at most once, maybe out of
order) and it says which frames to deliver now and whether a missing range must be fetched
from the conversation service.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Outcome:
    deliver: list[tuple[int, bytes]] = field(default_factory=list)
    duplicate: bool = False
    # (after_seq, until_seq) to fetch from the store when a gap is waiting.
    gap: tuple[int, int] | None = None
    # A new epoch began (issue 11): the seqs delivered before mean nothing now; ``last`` was
    # set to the new epoch's frame's seq - 1 (members' positions must follow).
    reset: bool = False


class Sequencer:
    """Per conversation: the last seq delivered and a small buffer of early frames."""

    __slots__ = ("epoch", "last", "max_pending", "pending")

    def __init__(self, last: int | None = None, max_pending: int = 1000) -> None:
        # None until the first join tells the gateway where the conversation stands.
        self.last = last
        self.epoch = 0  # of the conversation's sequence (parley_conversation.epochs)
        self.pending: dict[int, bytes] = {}
        self.max_pending = max_pending

    def start(self, last_seq: int, epoch: int = 0) -> Outcome:
        """Set the starting point (the conversation's lastSeq at join) and drain the buffer."""
        out = Outcome()
        if self.last is None:
            self.last = last_seq
            self.epoch = max(self.epoch, epoch)
            for seq in [s for s in self.pending if s <= last_seq]:
                del self.pending[seq]
            self._drain(out)
        return out

    def push(self, seq: int, frame: bytes, epoch: int = 0) -> Outcome:
        out = Outcome()
        if epoch != self.epoch:
            if epoch < self.epoch:  # from before the history was found shorter: void
                out.duplicate = True
                return out
            # A new epoch: the store's history was found shorter than the seqs handed out,
            # and this seq may repeat one delivered before. Start over from it.
            self.epoch = epoch
            self.pending.clear()
            if self.last is not None:
                self.last = seq - 1
                out.reset = True
        if self.last is None:
            if len(self.pending) < self.max_pending:
                self.pending[seq] = frame
            return out
        if seq <= self.last or seq in self.pending:
            out.duplicate = True
            return out
        if seq == self.last + 1:
            self.last = seq
            out.deliver.append((seq, frame))
            self._drain(out)
            return out
        self.pending[seq] = frame
        if len(self.pending) > self.max_pending:
            # Far behind: force a fetch of everything missing now.
            out.gap = self.missing()
        return out

    def _drain(self, out: Outcome) -> None:
        assert self.last is not None
        while (nxt := self.last + 1) in self.pending:
            out.deliver.append((nxt, self.pending.pop(nxt)))
            self.last = nxt

    def missing(self) -> tuple[int, int] | None:
        """The range (after, until] that blocks delivery, if any."""
        if self.last is None or not self.pending:
            return None
        return self.last, min(self.pending) - 1

    def fill(self, frames: list[tuple[int, bytes]]) -> Outcome:
        """Frames fetched from the store: delivered like live ones (dedupe, order)."""
        out = Outcome()
        for seq, frame in sorted(frames, key=lambda f: f[0]):
            sub = self.push(seq, frame, self.epoch)  # the store's history as it is now
            out.deliver.extend(sub.deliver)
        return out

    def skip_to(self, seq: int) -> Outcome:
        """Give up on a range that cannot be fetched: continue after ``seq``."""
        out = Outcome()
        if self.last is not None and seq > self.last:
            self.last = seq
            for s in [s for s in self.pending if s <= seq]:
                del self.pending[s]
            self._drain(out)
        return out
