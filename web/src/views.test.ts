import { describe, expect, it } from 'vitest';
import { initials, hueOf, displayName } from './names';
import type { Conversation, Message } from './protocol';
import { dayLabel, relativeTime } from './time';
import { previewOf, sortConversations, upsertConversation, withLastMessage } from './views';

const conv = (id: string, at: string, extra: Partial<Conversation> = {}): Conversation => ({
  _id: id,
  conversationId: id,
  title: id,
  createdAt: at,
  ...extra,
});

describe('conversation list', () => {
  it('sorts by latest activity, newest first, and replaces an updated entry in place', () => {
    const list = sortConversations([conv('a', '2025-01-01T00:00:00Z'), conv('b', '2025-02-01T00:00:00Z')]);
    expect(list.map((c) => c.conversationId)).toEqual(['b', 'a']);
    const msg: Message = { _id: 'm', conversationId: 'a', role: 'user', content: 'hey', seq: 4, createdAt: '2025-03-01T00:00:00Z' };
    const moved = upsertConversation(list, withLastMessage(list[1], msg));
    expect(moved.map((c) => c.conversationId)).toEqual(['a', 'b']);
    expect(moved[0].lastMessage?.content).toBe('hey');
  });

  it('keeps a newer last message when an older one arrives late', () => {
    const c = withLastMessage(conv('a', 'x'), { _id: 'm2', conversationId: 'a', role: 'user', content: 'new', seq: 9 });
    expect(withLastMessage(c, { _id: 'm1', conversationId: 'a', role: 'user', content: 'old', seq: 3 }).lastMessage?.content).toBe('new');
  });

  it('previews without Markdown noise and names agent steps', () => {
    const at = '2025-01-01T00:00:00Z';
    expect(previewOf(conv('a', at, { lastMessage: { content: '**Bold** `code`', role: 'user', createdAt: at } }))).toBe('Bold code');
    expect(previewOf(conv('a', at, { lastMessage: { content: '', role: 'assistant', createdAt: at, messageType: 'tool_call' } }))).toBe(
      'Using a tool…',
    );
    expect(previewOf(conv('a', at))).toBe('No messages yet');
  });
});

describe('names and times', () => {
  it('shows the token name when known, initials from it, and distinct colours for near ids', () => {
    expect(displayName('user-2', { 'user-2': 'Bob Stone' })).toBe('Bob Stone');
    expect(displayName('user-3', {})).toBe('user-3');
    expect(initials('Bob Stone')).toBe('BS');
    expect(initials('user-bob')).toBe('B');
    expect(initials('Ada')).toBe('A');
    expect(Math.abs(hueOf('user-1') - hueOf('user-2'))).toBeGreaterThan(20);
  });

  it('says now / minutes / the time, and labels days', () => {
    const now = Date.parse('2025-06-10T12:00:00Z');
    expect(relativeTime('2025-06-10T11:59:50Z', now)).toBe('now');
    expect(relativeTime('2025-06-10T11:50:00Z', now)).toBe('10 min');
    expect(relativeTime('not a date', now)).toBe('');
    expect(dayLabel('2025-06-10T08:00:00Z', now)).toBe('Today');
    expect(dayLabel('2025-06-09T08:00:00Z', now)).toBe('Yesterday');
  });
});
