import { describe, expect, it } from 'vitest';
import type { Message } from './protocol';
import type { StreamView } from './store';
import { finalOf, groupItems } from './turns';

const m = (id: string, role: Message['role'], type: Message['messageType'], parent?: string, seq = 0): Message => ({
  _id: id,
  conversationId: 'c',
  role,
  messageType: type,
  content: id,
  parentMessageId: parent ?? null,
  agentId: role === 'user' ? null : 'agent-demo',
  createdBy: role === 'user' ? 'user-1' : 'agent-demo',
  seq,
});

const stream = (id: string, parent: string | null): StreamView => ({
  streamId: id,
  agentId: 'agent-demo',
  parentMessageId: parent,
  chunks: ['hi'],
  text: 'hi',
  ended: false,
  finishReason: null,
  messageId: null,
  startedAt: 0,
});

describe('groupItems', () => {
  it('puts every step of one answer under one turn, and a new question starts a new one', () => {
    const items = groupItems(
      [
        m('u1', 'user', 'text', undefined, 2),
        m('t1', 'assistant', 'thinking', 'u1', 3),
        m('c1', 'assistant', 'tool_call', 'u1', 4),
        m('r1', 'tool', 'tool_result', 'u1', 5),
        m('a1', 'assistant', 'text', 'u1', 6),
        m('u2', 'user', 'text', undefined, 7),
        m('a2', 'assistant', 'text', 'u2', 8),
      ],
      [],
    );
    expect(items.map((i) => (i.kind === 'turn' ? i.messages.map((x) => x._id).join('+') : i.message._id))).toEqual([
      'u1',
      't1+c1+r1+a1',
      'u2',
      'a2',
    ]);
  });

  it('joins a live stream to the turn of its question, or opens a turn for it', () => {
    const items = groupItems([m('u1', 'user', 'text'), m('t1', 'assistant', 'thinking', 'u1')], [stream('s1', 'u1'), stream('s2', 'u9')]);
    expect(items).toHaveLength(3);
    const [, turn, lone] = items;
    expect(turn.kind === 'turn' && turn.streams.map((s) => s.streamId)).toEqual(['s1']);
    expect(lone.kind === 'turn' && lone.messages.length === 0 && lone.streams[0].streamId).toBe('s2');
  });

  it('never groups a deleted agent message or messages of different questions', () => {
    const deleted = { ...m('a0', 'assistant', 'text', 'u1'), deletedAt: '2025-01-01T00:00:00Z' };
    const items = groupItems([deleted, m('a1', 'assistant', 'text', 'u1'), m('a2', 'assistant', 'text', 'u2')], []);
    expect(items.map((i) => i.kind)).toEqual(['message', 'turn', 'turn']);
  });

  it('finds the final answer of a turn (text or error), which carries usage', () => {
    expect(finalOf([m('t', 'assistant', 'thinking'), m('a', 'assistant', 'text'), m('r', 'tool', 'tool_result')])?._id).toBe('a');
    expect(finalOf([m('t', 'assistant', 'thinking')])).toBeNull();
  });
});
