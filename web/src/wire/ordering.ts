/**
 * Order (docs/protocol.md 4.1): which of a conversation's durable events the client hands out.
 *
 * A durable event (`conversationId` + `seq`) is handed out once, in seq order: one at or below
 * the conversation's last seq is a repeat and dropped. A higher `epoch` (issue 11) restarts the
 * conversation's order at that frame; a lower one is from before the reset and dropped. The
 * last seq received per conversation is also what a resume and a join ask for (`since`,
 * `sinceSeq`). The Python client's counterpart is libs/client's ordering.py.
 */

import type { ServerFrame } from './types';

export class Ordering {
  /** Durable events dropped because their seq was already seen (duplicates). */
  duplicatesDropped = 0;
  /** Times a conversation's epoch changed (its history was found shorter; seqs reset). */
  epochResets = 0;
  private lastSeqs = new Map<string, number>();
  private epochs = new Map<string, number>();

  lastSeq(conversationId: string): number {
    return this.lastSeqs.get(conversationId) ?? 0;
  }

  /** A join from `sinceSeq`, never back from what was received: the seq it asks from. */
  joinFrom(conversationId: string, sinceSeq?: number): number {
    const since = Math.max(sinceSeq ?? 0, this.lastSeq(conversationId));
    this.lastSeqs.set(conversationId, since);
    return since;
  }

  /**
   * The frame's epoch against its conversation's: `stale` (from before a reset: drop it),
   * `reset` (a new epoch: the server's history of the conversation was found shorter than the
   * seqs it handed out, so seqs may be used again and what we hold is void; the order starts
   * over from this frame), or `current`.
   */
  epoch(frame: ServerFrame): 'stale' | 'reset' | 'current' {
    if (!frame.conversationId || typeof frame.epoch !== 'number') return 'current';
    const known = this.epochs.get(frame.conversationId) ?? 0;
    if (frame.epoch < known && typeof frame.seq === 'number') {
      this.duplicatesDropped += 1; // from before the reset: void
      return 'stale';
    }
    if (frame.epoch > known) {
      this.epochs.set(frame.conversationId, frame.epoch);
      if (known > 0 || this.lastSeqs.has(frame.conversationId)) {
        this.epochResets += 1;
        const from = typeof frame.seq === 'number' ? frame.seq - 1 : 0;
        this.lastSeqs.set(frame.conversationId, from);
        return 'reset';
      }
    }
    return 'current';
  }

  /** Whether the frame is handed out: not durable, or durable and above the last seq (then
   * its seq is the last one). */
  advance(frame: ServerFrame): boolean {
    if (!frame.conversationId || typeof frame.seq !== 'number') return true;
    const last = this.lastSeqs.get(frame.conversationId) ?? 0;
    if (frame.seq <= last) {
      this.duplicatesDropped += 1;
      return false;
    }
    this.lastSeqs.set(frame.conversationId, frame.seq);
    return true;
  }
}
