"""Order (docs/protocol.md 4.1): what a client hands out of each conversation's durable events.

A durable event (``conversationId`` + ``seq``) is handed out once, in seq order; a repeat is
dropped; a higher ``epoch`` restarts the conversation's ordering (the conversation was
reset), a lower one is from before the reset and dropped. The last seq received per
conversation is also what a resume asks for (``since``, ``sinceSeq``).
"""

from __future__ import annotations

from parley_client.frames import Frame


class Ordering:
    def __init__(self) -> None:
        self.last_seqs: dict[str, int] = {}  # conversation → last durable seq received
        self.epochs: dict[str, int] = {}
        self.duplicates_dropped = 0

    def last_seq(self, conversation_id: str) -> int:
        return self.last_seqs.get(conversation_id, 0)

    def accept(self, frame: Frame) -> bool:
        """Whether ``frame`` is handed out (not a repeat, not from before a reset)."""
        cid = frame.conversation_id
        if cid is None:
            return True
        if frame.epoch is not None:
            known = self.epochs.get(cid, 0)
            if frame.epoch < known and frame.seq is not None:
                self.duplicates_dropped += 1
                return False
            if frame.epoch > known:
                self.epochs[cid] = frame.epoch
                if known > 0 or cid in self.last_seqs:
                    self.last_seqs[cid] = frame.seq - 1 if frame.seq is not None else 0
        if frame.seq is not None:
            if frame.seq <= self.last_seqs.get(cid, 0):
                self.duplicates_dropped += 1
                return False
            self.last_seqs[cid] = frame.seq
        return True
