// wire/ordering: each durable event handed out once, in order; a new epoch restarts a
// conversation, frames from before it are dropped (docs/protocol.md 4.1).
import { describe, expect, it } from 'vitest';
import { Ordering } from './ordering';
import type { ServerFrame } from './types';

const frame = (seq?: number, epoch?: number, conversationId: string | undefined = 'c1') =>
  ({ event: 'message:new', conversationId, seq, epoch }) as ServerFrame;

/** What the connection does with a frame: the order's verdicts, in its order. */
function handOut(order: Ordering, f: ServerFrame): 'dropped' | 'reset' | 'handed' {
  const epoch = order.epoch(f);
  if (epoch === 'stale' || !order.advance(f)) return 'dropped';
  return epoch === 'reset' ? 'reset' : 'handed';
}

describe('Ordering', () => {
  it('drops and counts repeats', () => {
    const order = new Ordering();
    const handed = [1, 2, 2, 1, 3].filter((s) => handOut(order, frame(s)) === 'handed');
    expect(handed).toEqual([1, 2, 3]);
    expect(order.duplicatesDropped).toBe(2);
    expect([order.lastSeq('c1'), order.lastSeq('other')]).toEqual([3, 0]);
  });

  it('restarts a conversation at a higher epoch and drops frames from before it', () => {
    const order = new Ordering();
    expect([1, 2, 3].map((s) => handOut(order, frame(s, 1)))).toEqual(['handed', 'handed', 'handed']);
    expect(handOut(order, frame(1, 2))).toBe('reset'); // seq 1 again, a new epoch
    expect(handOut(order, frame(4, 1))).toBe('dropped'); // from before the reset
    expect(handOut(order, frame(2, 2))).toBe('handed');
    expect([order.lastSeq('c1'), order.duplicatesDropped, order.epochResets]).toEqual([2, 1, 1]);
  });

  it('joins from the higher of the asked seq and the last one received', () => {
    const order = new Ordering();
    expect(order.joinFrom('c1', 5)).toBe(5);
    handOut(order, frame(6));
    expect(order.joinFrom('c1', 2)).toBe(6);
    expect(order.joinFrom('c2')).toBe(0);
    // a first epoch after a join is a reset: what the join asked from is void
    expect(handOut(order, frame(1, 1, 'c2'))).toBe('reset');
  });

  it('passes frames without a conversation or a seq', () => {
    const order = new Ordering();
    expect(handOut(order, frame(undefined, undefined, undefined))).toBe('handed');
    expect(handOut(order, frame())).toBe('handed');
    expect(handOut(order, frame())).toBe('handed');
    expect(order.duplicatesDropped).toBe(0);
  });
});
