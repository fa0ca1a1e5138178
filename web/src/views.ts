/** Per-conversation views and conversation-list helpers (no network, no React). */
import type { Conversation, Message } from './protocol';
import { emptyConv, reduce, type Action, type ConvView } from './store';

export type Views = Record<string, ConvView>;
export type ViewsAction = { cid: string; action: Action } | { cid: '*'; action: Action } | { reset: true };

export function viewsReducer(state: Views, a: ViewsAction): Views {
  if ('reset' in a) return {}; // another user signed in: nothing of the previous one stays
  if (a.cid === '*') {
    const out: Views = {};
    let changed = false;
    for (const [k, v] of Object.entries(state)) {
      out[k] = reduce(v, a.action);
      if (out[k] !== v) changed = true;
    }
    return changed ? out : state;
  }
  const cur = state[a.cid] ?? emptyConv(a.cid);
  const next = reduce(cur, a.action);
  return next === cur && state[a.cid] ? state : { ...state, [a.cid]: next };
}

export function activityOf(c: Conversation): string {
  return c.lastMessage?.createdAt ?? c.updatedAt ?? c.createdAt ?? '';
}

/** Newest activity first. */
export function sortConversations(list: Conversation[]): Conversation[] {
  return [...list].sort((a, b) => activityOf(b).localeCompare(activityOf(a)));
}

export function upsertConversation(list: Conversation[], conv: Conversation): Conversation[] {
  return sortConversations([...list.filter((x) => x.conversationId !== conv.conversationId), conv]);
}

/** The list entry after a new message: its preview and time. */
export function withLastMessage(c: Conversation, m: Message): Conversation {
  if (c.lastMessage?.seq != null && m.seq != null && c.lastMessage.seq > m.seq) return c;
  return {
    ...c,
    lastMessage: {
      content: m.content,
      role: m.role,
      createdAt: m.createdAt ?? new Date().toISOString(),
      messageId: m._id,
      messageType: m.messageType ?? 'text',
      seq: m.seq,
    },
  };
}

/** What the list shows under a title: a one-line preview of the last message. */
export function previewOf(c: Conversation): string {
  const lm = c.lastMessage;
  if (!lm) return c.agentId ? 'No messages yet' : 'No messages yet';
  const type = lm.messageType ?? 'text';
  if (type === 'tool_call') return 'Using a tool…';
  if (type === 'tool_result') return 'Tool result';
  if (type === 'thinking') return 'Thinking…';
  const text = (lm.content ?? '')
    .replace(/\*\*|__|`+|^#+\s*|^>\s*|\|/gm, '')
    .replace(/\s+/g, ' ')
    .trim();
  return text.slice(0, 90) || (lm.role === 'assistant' ? 'Answer' : '…');
}
