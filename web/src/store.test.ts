import { describe, expect, it } from 'vitest';
import type { Message } from './protocol';
import { agentBusy, emptyConv, receiptOf, reduce, resultsByCallId, totals, upsertMessages } from './store';

const m = (id: string, seq: number | null, extra: Partial<Message> = {}): Message => ({
  _id: id,
  conversationId: 'c',
  role: 'user',
  content: id,
  seq,
  ...extra,
});

describe('upsertMessages', () => {
  it('keeps seq order, replaces by id, and drops the optimistic copy', () => {
    let list = upsertMessages([], [m('b', 2), m('a', 1)]);
    list = upsertMessages(list, [m('local:cm-1', null, { clientMessageId: 'cm-1' })]);
    expect(list.map((x) => x._id)).toEqual(['a', 'b', 'local:cm-1']);
    list = upsertMessages(list, [m('c', 3, { clientMessageId: 'cm-1' })]);
    expect(list.map((x) => x._id)).toEqual(['a', 'b', 'c']);
    list = upsertMessages(list, [m('b', null, { content: 'edited' })]);
    expect(list.find((x) => x._id === 'b')).toMatchObject({ content: 'edited', seq: 2 });
  });
});

describe('reduce', () => {
  it('pages history older and tracks hasMore', () => {
    let v = reduce(emptyConv('c'), {
      type: 'history',
      messages: [m('m5', 5), m('m6', 6)],
      hasMore: true,
      older: false,
    });
    expect(v.oldestSeq).toBe(5);
    expect(v.hasMore).toBe(true);
    v = reduce(v, { type: 'history', messages: [m('m3', 3), m('m4', 4)], hasMore: false, older: true });
    expect(v.messages.map((x) => x.seq)).toEqual([3, 4, 5, 6]);
    expect(v.hasMore).toBe(false);
    expect(v.oldestSeq).toBe(3);
  });

  it('grows a stream by delta index and replaces it with the stored message', () => {
    let v = emptyConv('c');
    v = reduce(v, {
      type: 'streamStart',
      data: { streamId: 's1', conversationId: 'c', agentId: 'agent-demo', parentMessageId: 'u1' },
      now: 0,
    });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 'Hel', index: 0 } });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: ' there', index: 2 } });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 'lo', index: 1 } });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 'lo', index: 1 } });
    expect(v.streams[0].text).toBe('Hello there');
    expect(agentBusy(v)).toBe(true);
    v = reduce(v, { type: 'streamEnd', data: { streamId: 's1', finishReason: 'stop', messageId: 'a1' } });
    expect(v.streams[0].ended).toBe(true);
    v = reduce(v, {
      type: 'message',
      message: m('a1', 7, { role: 'assistant', agentId: 'agent-demo', content: 'Hello there' }),
    });
    expect(v.streams).toHaveLength(0);
    expect(v.messages.map((x) => x.content)).toEqual(['Hello there']);
  });

  it('takes a snapshot delta (join mid-stream) as the text so far, then the next deltas', () => {
    let v = emptyConv('c');
    v = reduce(v, {
      type: 'streamStart',
      data: { streamId: 's1', conversationId: 'c', agentId: 'agent-demo', parentMessageId: 'u1' },
      now: 0,
    });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 'Hel', index: 0 } });
    // A resume: the gateway sends all the text of deltas 0..2 at once.
    v = reduce(v, {
      type: 'streamDelta',
      data: { streamId: 's1', delta: 'Hello the', index: 2, snapshot: true },
    });
    expect(v.streams[0].text).toBe('Hello the');
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 're', index: 3 } });
    v = reduce(v, { type: 'streamDelta', data: { streamId: 's1', delta: 'lo', index: 1 } });
    expect(v.streams[0].text).toBe('Hello there');
  });

  it('removes a stream whose message came first when the end names it', () => {
    let v = emptyConv('c');
    v = reduce(v, {
      type: 'streamStart',
      data: { streamId: 's1', conversationId: 'c', agentId: 'agent-demo', parentMessageId: 'u1' },
      now: 0,
    });
    v = reduce(v, {
      type: 'message',
      message: m('t1', 4, {
        role: 'assistant',
        messageType: 'tool_call',
        agentId: 'agent-demo',
        parentMessageId: 'u1',
      }),
    });
    expect(v.streams).toHaveLength(1); // a tool_call does not replace by guess
    v = reduce(v, {
      type: 'streamEnd',
      data: { streamId: 's1', finishReason: 'tool_calls', messageId: 't1' },
    });
    expect(v.streams).toHaveLength(0);
  });

  it('sets and clears agent status and typing', () => {
    let v = emptyConv('c');
    v = reduce(v, {
      type: 'agentStatus',
      status: { kind: 'thinking', agentId: 'agent-demo', toolName: null, since: 0 },
    });
    expect(agentBusy(v)).toBe(true);
    v = reduce(v, { type: 'message', message: m('a', 2, { role: 'assistant' }) });
    expect(v.agentStatus).toBeNull();
    v = reduce(v, { type: 'typing', who: 'user-2', on: true, now: 1000 });
    expect(Object.keys(v.typing)).toEqual(['user-2']);
    v = reduce(v, { type: 'tick', now: 2000 });
    expect(Object.keys(v.typing)).toEqual(['user-2']);
    v = reduce(v, { type: 'tick', now: 100000 });
    expect(Object.keys(v.typing)).toEqual([]);
  });
});

describe('derived', () => {
  it('maps tool results by toolCallId and sums totals', () => {
    const msgs = [
      m('tc', 2, {
        role: 'assistant',
        messageType: 'tool_call',
        toolCalls: [{ id: 'call_1', type: 'mcp_tool', function: { name: 'web_search', arguments: '{}' } }],
      }),
      m('tr', 3, {
        role: 'tool',
        messageType: 'tool_result',
        toolResults: [{ toolCallId: 'call_1', toolName: 'web_search', success: true, result: {} }],
      }),
      m('a', 4, {
        role: 'assistant',
        usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 },
        cost: 0.001,
      }),
    ];
    expect(resultsByCallId(msgs).get('call_1')?.success).toBe(true);
    const v = { ...emptyConv('c'), messages: msgs };
    expect(totals(v)).toEqual({ messages: 3, tokens: 15, cost: 0.001 });
  });
});

describe('reset (a new epoch)', () => {
  it("replaces what we hold with the server's history", () => {
    let s = reduce(emptyConv('c'), { type: 'history', messages: [m('a', 1), m('b', 2), m('lost', 3)], hasMore: false, older: false });
    s = reduce(s, { type: 'reset', messages: [m('a', 1), m('b', 2), m('new', 3)], hasMore: false });
    expect(s.messages.map((x) => x._id)).toEqual(['a', 'b', 'new']);
    expect(s.loaded).toBe(true);
  });
});

describe('receipts', () => {
  it('cursors only move forward and make my message delivered, then seen', () => {
    const mine = m('x', 5, { createdBy: 'me', messageStatus: 'sent' });
    let v = reduce(emptyConv('c'), { type: 'history', messages: [mine], hasMore: false, older: false });
    expect(receiptOf(v, mine, 'me')).toEqual({ delivered: false, seenBy: [] });
    // My own other device receiving it delivers nothing.
    v = reduce(v, { type: 'cursors', delivered: [{ principalId: 'me', seq: 9 }] });
    expect(receiptOf(v, mine, 'me').delivered).toBe(false);
    v = reduce(v, { type: 'cursors', delivered: [{ principalId: 'bob', seq: 5 }] });
    expect(receiptOf(v, mine, 'me')).toEqual({ delivered: true, seenBy: [] });
    v = reduce(v, { type: 'cursors', read: [{ principalId: 'carol', seq: 7 }, { principalId: 'bob', seq: 4 }] });
    expect(receiptOf(v, mine, 'me').seenBy).toEqual(['carol']);
    const same = reduce(v, { type: 'cursors', read: [{ principalId: 'carol', seq: 6 }] });
    expect(same).toBe(v); // never backwards
    v = reduce(v, { type: 'cursors', read: [{ principalId: 'bob', seq: 5 }] });
    expect(receiptOf(v, mine, 'me').seenBy).toEqual(['bob', 'carol']);
    // The stored status says delivered too (history loaded after the fact).
    expect(receiptOf(emptyConv('c'), { ...mine, messageStatus: 'delivered' }, 'me').delivered).toBe(true);
  });
});
