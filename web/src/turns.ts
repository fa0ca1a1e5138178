/**
 * One agent turn, one block: the stored messages of a turn (same parentMessageId, or the same
 * agent's consecutive messages) and its live streams are grouped, in order, under one header.
 */
import type { Message } from './protocol';
import type { StreamView } from './store';

export type Item =
  | { kind: 'message'; key: string; message: Message }
  | { kind: 'turn'; key: string; agentId: string | null; parentMessageId: string | null; messages: Message[]; streams: StreamView[] };

function isAgentStep(m: Message): boolean {
  return (m.role === 'assistant' || m.role === 'tool') && !m.deletedAt;
}

export function groupItems(messages: Message[], streams: StreamView[]): Item[] {
  const items: Item[] = [];
  for (const m of messages) {
    if (!isAgentStep(m)) {
      items.push({ kind: 'message', key: m._id, message: m });
      continue;
    }
    const last = items[items.length - 1];
    const parent = m.parentMessageId ?? null;
    const sameTurn =
      last?.kind === 'turn' &&
      (parent ? last.parentMessageId === parent : !last.parentMessageId && last.agentId === (m.agentId ?? null));
    if (sameTurn && last.kind === 'turn') last.messages.push(m);
    else items.push({ kind: 'turn', key: `turn:${m._id}`, agentId: m.agentId ?? null, parentMessageId: parent, messages: [m], streams: [] });
  }
  for (const s of streams) {
    const turn = [...items]
      .reverse()
      .find((it): it is Extract<Item, { kind: 'turn' }> => it.kind === 'turn' && !!s.parentMessageId && it.parentMessageId === s.parentMessageId);
    if (turn) turn.streams.push(s);
    else
      items.push({
        kind: 'turn',
        key: `stream:${s.streamId}`,
        agentId: s.agentId,
        parentMessageId: s.parentMessageId,
        messages: [],
        streams: [s],
      });
  }
  return items;
}

/** The turn's final answer: its last text or error message (carries usage and cost). */
export function finalOf(messages: Message[]): Message | null {
  for (let i = messages.length - 1; i >= 0; i--) {
    const t = messages[i].messageType ?? 'text';
    if (t === 'text' || t === 'error') return messages[i];
  }
  return null;
}
