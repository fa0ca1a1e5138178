/**
 * The state of one open conversation as the page shows it, and the pure reducer that applies
 * history pages, durable events and ephemeral events to it. No network, no React: unit-tested.
 */
import type {
  Conversation,
  Message,
  StreamDelta,
  StreamEnd,
  StreamStart,
  ToolResult,
} from './protocol';

export interface StreamView {
  streamId: string;
  agentId: string | null;
  parentMessageId: string | null;
  chunks: string[]; // by delta index
  text: string;
  ended: boolean;
  finishReason: string | null;
  messageId: string | null;
  startedAt: number;
}

export interface AgentStatus {
  kind: 'thinking' | 'tool-calling';
  agentId: string | null;
  toolName: string | null;
  since: number;
}

export interface ConvView {
  conversationId: string;
  conversation: Conversation | null;
  messages: Message[]; // ascending seq
  streams: StreamView[];
  agentStatus: AgentStatus | null;
  typing: Record<string, number>; // principal id → expiry (ms epoch)
  oldestSeq: number | null;
  hasMore: boolean;
  loadingOlder: boolean;
  loaded: boolean;
  /** Receipts (docs/protocol.md 3.6): principal id → how far it read / received. */
  reads: Record<string, number>;
  delivered: Record<string, number>;
}

/** A cursor as the events carry it. */
export interface CursorMove {
  principalId: string;
  seq: number;
}

export function emptyConv(conversationId: string): ConvView {
  return {
    conversationId,
    conversation: null,
    messages: [],
    streams: [],
    agentStatus: null,
    typing: {},
    oldestSeq: null,
    hasMore: false,
    loadingOlder: false,
    loaded: false,
    reads: {},
    delivered: {},
  };
}

export type Action =
  | { type: 'conversation'; conversation: Conversation }
  | { type: 'history'; messages: Message[]; hasMore: boolean; older: boolean }
  | { type: 'loadingOlder'; value: boolean }
  | { type: 'message'; message: Message }
  | { type: 'deleted'; messageId: string }
  | { type: 'streamStart'; data: StreamStart; now: number }
  | { type: 'streamDelta'; data: StreamDelta }
  | { type: 'streamEnd'; data: StreamEnd }
  | { type: 'agentStatus'; status: AgentStatus | null }
  | { type: 'typing'; who: string; on: boolean; now: number }
  | { type: 'tick'; now: number }
  /** Read or delivery cursors moved (only forward: "max per principal"). */
  | { type: 'cursors'; read?: CursorMove[]; delivered?: CursorMove[] }
  /** A new epoch (docs/protocol.md 4.1): the server's history replaces what we hold. */
  | { type: 'reset'; messages: Message[]; hasMore: boolean };

const TYPING_TTL_MS = 6000;

function seqOf(m: Message): number {
  return typeof m.seq === 'number' ? m.seq : Number.MAX_SAFE_INTEGER;
}

/** Insert or replace by `_id`, keeping ascending seq order (messages without seq go last). */
export function upsertMessages(list: Message[], incoming: Message[]): Message[] {
  if (!incoming.length) return list;
  const byId = new Map(list.map((m) => [m._id, m]));
  for (const m of incoming) {
    // The stored copy replaces the optimistic one the page showed while sending.
    if (m.clientMessageId && !m._id.startsWith('local:')) byId.delete(`local:${m.clientMessageId}`);
    const old = byId.get(m._id);
    // Keep the seq we know if the newer copy lacks one (e.g. a reply without seq).
    byId.set(m._id, old && m.seq == null && old.seq != null ? { ...m, seq: old.seq } : m);
  }
  return [...byId.values()].sort((a, b) => seqOf(a) - seqOf(b));
}

function isAgentAnswer(m: Message): boolean {
  return m.role === 'assistant' || m.role === 'tool' || m.role === 'system';
}

/** Streams that the persisted message replaces. */
function replacedBy(s: StreamView, m: Message): boolean {
  if (s.messageId) return s.messageId === m._id;
  if (!isAgentAnswer(m)) return false;
  const sameAgent = !s.agentId || !m.agentId || s.agentId === m.agentId;
  if (!sameAgent) return false;
  if (m.messageType === 'text' || m.messageType === undefined || m.messageType === 'error') {
    if (s.parentMessageId && m.parentMessageId) return s.parentMessageId === m.parentMessageId;
    return s.ended;
  }
  return false;
}

export function reduce(state: ConvView, action: Action): ConvView {
  switch (action.type) {
    case 'conversation':
      return { ...state, conversation: action.conversation };
    case 'reset':
      return reduce(
        { ...emptyConv(state.conversationId), conversation: state.conversation },
        { type: 'history', messages: action.messages, hasMore: action.hasMore, older: false },
      );
    case 'history': {
      const messages = upsertMessages(state.messages, action.messages);
      const seqs = action.messages.map((m) => m.seq ?? 0).filter((s) => s > 0);
      const pageOldest = seqs.length ? Math.min(...seqs) : null;
      const oldestSeq =
        pageOldest === null
          ? state.oldestSeq
          : state.oldestSeq === null
            ? pageOldest
            : Math.min(state.oldestSeq, pageOldest);
      const hasMore = action.older || !state.loaded ? action.hasMore : state.hasMore;
      return { ...state, messages, oldestSeq, hasMore, loaded: true, loadingOlder: false };
    }
    case 'loadingOlder':
      return { ...state, loadingOlder: action.value };
    case 'message': {
      const m = action.message;
      const messages = upsertMessages(state.messages, [m]);
      const streams = state.streams.filter((s) => !replacedBy(s, m));
      let agentStatus = state.agentStatus;
      // A final answer (or an error) ends the agent's visible status.
      if (
        agentStatus &&
        m.role === 'assistant' &&
        (m.messageType === 'text' || m.messageType === 'error' || m.messageType === undefined)
      )
        agentStatus = null;
      if (agentStatus && m.messageType === 'tool_result' && agentStatus.kind === 'tool-calling')
        agentStatus = null;
      const typing = { ...state.typing };
      if (m.createdBy) delete typing[m.createdBy];
      return { ...state, messages, streams, agentStatus, typing };
    }
    case 'deleted':
      return { ...state, messages: state.messages.filter((m) => m._id !== action.messageId) };
    case 'streamStart': {
      const d = action.data;
      if (state.streams.some((s) => s.streamId === d.streamId)) return state;
      const s: StreamView = {
        streamId: d.streamId,
        agentId: d.agentId ?? null,
        parentMessageId: d.parentMessageId ?? null,
        chunks: [],
        text: '',
        ended: false,
        finishReason: null,
        messageId: null,
        startedAt: action.now,
      };
      return { ...state, streams: [...state.streams, s] };
    }
    case 'streamDelta': {
      const d = action.data;
      let found = false;
      const streams = state.streams.map((s) => {
        if (s.streamId !== d.streamId) return s;
        found = true;
        if (d.snapshot) {
          // Joined or resumed mid-stream: the text of deltas 0..index replaces ours.
          // Indexes below it count as received (empty), so late copies are duplicates.
          const chunks: string[] = new Array<string>(d.index).fill('');
          chunks[d.index] = d.delta;
          for (let i = d.index + 1; i < s.chunks.length; i++) chunks[i] = s.chunks[i];
          return { ...s, chunks, text: chunks.join('') };
        }
        if (s.chunks[d.index] !== undefined) return s; // duplicate delta
        const chunks = s.chunks.slice();
        chunks[d.index] = d.delta;
        return { ...s, chunks, text: chunks.join('') };
      });
      if (!found) {
        // A delta whose start we missed (joined mid-stream): show it anyway.
        const chunks: string[] = [];
        chunks[d.index] = d.delta;
        streams.push({
          streamId: d.streamId,
          agentId: null,
          parentMessageId: null,
          chunks,
          text: chunks.join(''),
          ended: false,
          finishReason: null,
          messageId: null,
          startedAt: Date.now(),
        });
      }
      return { ...state, streams };
    }
    case 'streamEnd': {
      const d = action.data;
      const messageId = d.messageId ?? null;
      // If the persisted message already arrived, the stream disappears now.
      if (messageId && state.messages.some((m) => m._id === messageId))
        return { ...state, streams: state.streams.filter((s) => s.streamId !== d.streamId) };
      return {
        ...state,
        streams: state.streams.map((s) =>
          s.streamId === d.streamId
            ? { ...s, ended: true, finishReason: d.finishReason ?? null, messageId }
            : s,
        ),
      };
    }
    case 'agentStatus':
      return { ...state, agentStatus: action.status };
    case 'typing': {
      const typing = { ...state.typing };
      if (action.on) typing[action.who] = action.now + TYPING_TTL_MS;
      else delete typing[action.who];
      return { ...state, typing };
    }
    case 'cursors': {
      const reads = advance(state.reads, action.read);
      const delivered = advance(state.delivered, action.delivered);
      return reads === state.reads && delivered === state.delivered ? state : { ...state, reads, delivered };
    }
    case 'tick': {
      const typing: Record<string, number> = {};
      let changed = false;
      for (const [k, v] of Object.entries(state.typing)) {
        if (v > action.now) typing[k] = v;
        else changed = true;
      }
      return changed ? { ...state, typing } : state;
    }
    default:
      return state;
  }
}

function advance(cur: Record<string, number>, moves: CursorMove[] | undefined): Record<string, number> {
  let out = cur;
  for (const m of moves ?? []) {
    if (!m || typeof m.principalId !== 'string' || typeof m.seq !== 'number') continue;
    if ((out[m.principalId] ?? 0) >= m.seq) continue;
    if (out === cur) out = { ...cur };
    out[m.principalId] = m.seq;
  }
  return out;
}

export interface Receipt {
  delivered: boolean;
  /** Who else read it (principal ids), in a stable order. */
  seenBy: string[];
}

/** Where one of my messages stands: delivered once another principal's connection received
 * it, seen by each other principal whose read cursor reached it. */
export function receiptOf(view: ConvView, m: Message, self: string | null): Receipt {
  const seq = m.seq ?? 0;
  if (!seq || m._id.startsWith('local:')) return { delivered: false, seenBy: [] };
  const seenBy = Object.entries(view.reads)
    .filter(([who, s]) => who !== self && s >= seq)
    .map(([who]) => who)
    .sort();
  const delivered =
    m.messageStatus === 'delivered' ||
    seenBy.length > 0 ||
    Object.entries(view.delivered).some(([who, s]) => who !== self && s >= seq);
  return { delivered, seenBy };
}

/** Tool results by toolCallId across the loaded messages (design doc 5.2: spinner until). */
export function resultsByCallId(messages: Message[]): Map<string, ToolResult> {
  const map = new Map<string, ToolResult>();
  for (const m of messages)
    for (const r of m.toolResults ?? []) if (r && r.toolCallId) map.set(r.toolCallId, r);
  return map;
}

export interface Totals {
  messages: number;
  tokens: number;
  cost: number;
}

/** Conversation totals: the stored conversation's, or the sum of what is loaded if larger. */
export function totals(view: ConvView): Totals {
  let tokens = 0;
  let cost = 0;
  for (const m of view.messages) {
    tokens += m.usage?.totalTokens ?? 0;
    cost += m.cost ?? 0;
  }
  const c = view.conversation;
  return {
    messages: Math.max(
      c?.totalMessages ?? 0,
      view.messages.filter((m) => !m._id.startsWith('local:')).length,
    ),
    tokens: Math.max(c?.totalTokens ?? 0, tokens),
    cost: Math.max(c?.totalCost ?? 0, cost),
  };
}

export function agentBusy(view: ConvView): boolean {
  return view.agentStatus !== null || view.streams.some((s) => !s.ended);
}
