/**
 * The events a page's ParleyClient receives, folded into the page's state (conversation list,
 * per-conversation views, presence, display names, unread counts, agents): the event side of
 * useParley, which owns the client's lifecycle (connect, retry, close) and the state itself.
 *
 * Unread counts and read positions are the server's (docs/protocol.md 3.6): the list brings
 * `unreadCount`/`readSeq`, watched conversations count their `message:new` live, and the
 * others are refreshed on `conversation:activity`.
 */
import type { Dispatch, RefObject, SetStateAction } from 'react';
import {
  actorOf,
  Ev,
  type ActivityData,
  type AgentInfo,
  type Conversation,
  type ConversationJoinedData,
  type DeliveredData,
  type Message,
  type ParleyClient,
  type ReadData,
  type ServerFrame,
  type StreamDelta,
  type StreamEnd,
  type StreamStart,
} from './protocol';
import type { AgentStatus } from './store';
import { sortConversations, upsertConversation, withLastMessage, type ViewsAction } from './views';

/** Conversations watched at once for live unread counts (the gateway allows 100). */
const WATCH_MAX = 20;
/** A conversation not watched is refreshed at most once per this many ms on activity. */
const ACTIVITY_DEBOUNCE_MS = 500;

type Setter<T> = Dispatch<SetStateAction<T>>;

/** Where the events go: useParley's state and refs. */
export interface EventSinks {
  alive: () => boolean;
  dispatch: Dispatch<ViewsAction>;
  setConversations: Setter<Conversation[]>;
  setListError: Setter<string | null>;
  setPresence: Setter<Record<string, boolean>>;
  setNames: Setter<Record<string, string>>;
  setAgents: Setter<AgentInfo[]>;
  setUnread: Setter<Record<string, number>>;
  setNotice: Setter<string | null>;
  setLog: Setter<string[]>;
  /** streamId → conversationId (stream deltas and ends may carry only the stream). */
  streamConv: Map<string, string>;
  openRef: RefObject<string | null>;
  /** My read cursor per conversation (the server's, moved forward here as I read). */
  readRef: RefObject<Record<string, number>>;
  /** The highest seq already counted as unread per conversation (no message counted twice). */
  countedRef: RefObject<Record<string, number>>;
  markRead: (cid: string, seq: number | null | undefined) => void;
  onDeleted: (cid: string) => void;
}

/** What the server counts as unread (docs/protocol.md 3.6): what others wrote and people read. */
function counted(m: Message, self: string | null): boolean {
  const type = m.messageType ?? 'text';
  const mine = m.role === 'user' && m.createdBy === self;
  return (type === 'text' || type === 'error' || type === 'system') && !mine && !m.deletedAt;
}

/** A principal's display name from a frame's data (`name` or `agentName`), remembered. */
export function rememberName(setNames: Setter<Record<string, string>>, d: unknown): void {
  const o = (d ?? {}) as Record<string, unknown>;
  const who = actorOf(o);
  const name = typeof o.name === 'string' ? o.name : typeof o.agentName === 'string' ? o.agentName : null;
  if (who && name) setNames((n) => (n[who] === name ? n : { ...n, [who]: name }));
}

/** Follow `c`'s events into `sinks`; the returned `stop` unsubscribes and drops the timers. */
export function followEvents(c: ParleyClient, sinks: EventSinks): { stop: () => void } {
  const {
    alive,
    dispatch,
    setConversations,
    setListError,
    setPresence,
    setNames,
    setAgents,
    setUnread,
    setNotice,
    setLog,
    streamConv,
    openRef,
    readRef,
    countedRef,
    markRead,
    onDeleted,
  } = sinks;
  const offs: Array<() => void> = [];
  const on = (ev: string, fn: (f: ServerFrame) => void) => offs.push(c.on(ev, fn));
  const cidOf = (f: ServerFrame): string | null => {
    const d = (f.data ?? {}) as Record<string, unknown>;
    return (
      f.conversationId ??
      (typeof d.conversationId === 'string' ? d.conversationId : null) ??
      (typeof d.streamId === 'string' ? (streamConv.get(d.streamId) ?? null) : null)
    );
  };
  const learnName = (d: unknown) => rememberName(setNames, d);
  /** Participants carry the directory's display names (docs/protocol.md 3.6). */
  const learnParticipants = (conv: Conversation | null | undefined) => {
    for (const x of conv?.participants ?? []) {
      const who = x.userId ?? x.agentId;
      if (who && x.name) learnName({ principalId: who, name: x.name });
    }
  };
  const online = (who: string | null, value = true) => {
    if (who) setPresence((p) => (p[who] === value ? p : { ...p, [who]: value }));
  };

  on('*', (f) => {
    const line = `${new Date().toISOString().slice(11, 23)} ${f.event}${
      f.seq != null ? ` #${f.seq}` : ''
    }${f.conversationId ? ` ${f.conversationId}` : ''}`;
    setLog((l) => [line, ...l].slice(0, 60));
  });

  // A conversation began a new epoch (its stored history was found shorter than the seqs
  // we were given): what we show may no longer exist; show the server's history instead.
  on('epoch', (f) => {
    const cid = f.conversationId;
    if (!cid) return;
    c.messages(cid, { limit: 50 })
      .then((page) => {
        if (alive()) dispatch({ cid, action: { type: 'reset', messages: page.items, hasMore: page.hasMore } });
      })
      .catch(() => undefined);
  });

  const onMessage = (f: ServerFrame) => {
    const m = f.data as Message;
    const cid = cidOf(f) ?? m?.conversationId;
    if (!m || !m._id || !cid) return;
    const msg = m.seq == null && f.seq != null && f.event === Ev.MESSAGE_NEW ? { ...m, seq: f.seq } : m;
    dispatch({ cid, action: { type: 'message', message: msg } });
    if (msg.role === 'assistant' && msg.agentId) online(msg.agentId);
    if (f.event !== Ev.MESSAGE_NEW) return;
    setConversations((list) => list.map((cv) => (cv.conversationId === cid ? withLastMessage(cv, msg) : cv)));
    const seq = msg.seq ?? 0;
    if (cid === openRef.current) markRead(cid, msg.seq);
    else if (
      counted(msg, c.principal?.id ?? null) &&
      seq > (readRef.current[cid] ?? 0) &&
      seq > (countedRef.current[cid] ?? 0)
    ) {
      countedRef.current[cid] = seq;
      setUnread((u) => ({ ...u, [cid]: (u[cid] ?? 0) + 1 }));
    }
    // Agent answers change the conversation's totals: refresh them.
    if (msg.role === 'assistant' && msg.usage)
      c.getConversation(cid)
        .then((conv) => dispatch({ cid, action: { type: 'conversation', conversation: conv } }))
        .catch(() => undefined);
  };
  on(Ev.MESSAGE_NEW, onMessage);
  on(Ev.MESSAGE_UPDATED, onMessage);
  on(Ev.MESSAGE_REACTED, onMessage);
  on(Ev.MESSAGE_DELETED, (f) => {
    // The stored message with deletedAt: it stays in place as a placeholder.
    const d = (f.data ?? {}) as Partial<Message> & { messageId?: string };
    const cid = cidOf(f);
    if (cid && d._id && d.role) dispatch({ cid, action: { type: 'message', message: d as Message } });
    else if (cid && d.messageId) dispatch({ cid, action: { type: 'deleted', messageId: d.messageId } });
  });

  const watch = (conv: Conversation) => {
    if (c.joinedConversations().includes(conv.conversationId)) return;
    const since = Math.max(conv.lastSeq ?? 0, conv.lastMessage?.seq ?? 0);
    c.join(conv.conversationId, since).catch(() => undefined);
  };
  const onConv = (f: ServerFrame) => {
    const conv = f.data as Conversation;
    if (!conv || !conv.conversationId) return;
    dispatch({ cid: conv.conversationId, action: { type: 'conversation', conversation: conv } });
    const me = c.principal?.id;
    const member = (conv.participants ?? []).some((p) => p.userId === me && !p.leftAt);
    if (conv.participants && !member) {
      setConversations((list) => list.filter((x) => x.conversationId !== conv.conversationId));
      return;
    }
    setConversations((list) => upsertConversation(list, conv));
    if (f.event === Ev.CONVERSATION_CREATED || f.event === Ev.CONVERSATION_UPDATED) watch(conv);
  };
  on(Ev.CONVERSATION_CREATED, onConv);
  on(Ev.CONVERSATION_UPDATED, onConv);
  on(Ev.CONVERSATION_DELETED, (f) => {
    const cid = cidOf(f) ?? (f.data as Conversation | undefined)?.conversationId;
    if (!cid) return;
    setConversations((list) => list.filter((x) => x.conversationId !== cid));
    void c.leave(cid);
    onDeleted(cid);
  });
  on(Ev.CONVERSATION_JOINED, (f) => {
    const d = f.data as ConversationJoinedData | undefined;
    const conv = d?.conversation;
    if (!conv?.conversationId) return;
    const cid = conv.conversationId;
    dispatch({ cid, action: { type: 'conversation', conversation: conv } });
    learnParticipants(conv);
    const cursors = Array.isArray(d?.cursors) ? d.cursors : [];
    dispatch({
      cid,
      action: {
        type: 'cursors',
        read: cursors.map((x) => ({ principalId: x.principalId, seq: x.readSeq ?? 0 })),
      },
    });
  });
  // Receipts: who read how far (and my own reads from my other tabs and devices), and
  // how far others' connections received.
  on(Ev.CONVERSATION_READ, (f) => {
    const d = f.data as ReadData | undefined;
    const cid = d?.conversationId ?? cidOf(f);
    if (!cid || !Array.isArray(d?.cursors)) return;
    dispatch({ cid, action: { type: 'cursors', read: d.cursors } });
    const mine = d.cursors.find((x) => x.principalId === c.principal?.id && x.kind === c.principal?.kind);
    if (!mine) return;
    readRef.current = { ...readRef.current, [cid]: Math.max(readRef.current[cid] ?? 0, mine.seq) };
    if (typeof d.unreadCount === 'number') {
      const n = cid === openRef.current ? 0 : d.unreadCount;
      setUnread((u) => ({ ...u, [cid]: n }));
    }
  });
  on(Ev.MESSAGE_DELIVERED, (f) => {
    const d = f.data as DeliveredData | undefined;
    const cid = d?.conversationId ?? cidOf(f);
    if (cid && Array.isArray(d?.cursors)) dispatch({ cid, action: { type: 'cursors', delivered: d.cursors } });
  });
  // Something new in a conversation this page does not watch: refresh its entry (preview,
  // unread count) from the server, at most once per conversation per debounce window.
  const activityTimers = new Map<string, ReturnType<typeof setTimeout>>();
  on(Ev.CONVERSATION_ACTIVITY, (f) => {
    const d = f.data as ActivityData | undefined;
    const cid = d?.conversationId;
    if (!cid || c.joinedConversations().includes(cid) || activityTimers.has(cid)) return;
    activityTimers.set(
      cid,
      setTimeout(() => {
        activityTimers.delete(cid);
        c.getConversation(cid)
          .then((conv) => {
            if (!alive()) return;
            learnParticipants(conv);
            setConversations((list) => upsertConversation(list, conv));
            if (typeof conv.unreadCount === 'number') {
              const n = cid === openRef.current ? 0 : conv.unreadCount;
              setUnread((u) => ({ ...u, [cid]: n }));
            }
          })
          .catch(() => undefined);
      }, ACTIVITY_DEBOUNCE_MS),
    );
  });
  on(Ev.MESSAGE_STREAM_START, (f) => {
    const d = f.data as StreamStart;
    const cid = cidOf(f);
    if (!d?.streamId || !cid) return;
    streamConv.set(d.streamId, cid);
    online(d.agentId ?? null);
    dispatch({ cid, action: { type: 'streamStart', data: d, now: Date.now() } });
  });
  on(Ev.MESSAGE_STREAM_DELTA, (f) => {
    const d = f.data as StreamDelta;
    const cid = cidOf(f) ?? openRef.current;
    if (d?.streamId && cid) dispatch({ cid, action: { type: 'streamDelta', data: d } });
  });
  on(Ev.MESSAGE_STREAM_END, (f) => {
    const d = f.data as StreamEnd;
    const cid = cidOf(f) ?? openRef.current;
    if (d?.streamId && cid) dispatch({ cid, action: { type: 'streamEnd', data: d } });
  });
  const onAgent = (kind: AgentStatus['kind']) => (f: ServerFrame) => {
    const cid = cidOf(f);
    if (!cid) return;
    const d = (f.data ?? {}) as Record<string, unknown>;
    const state = String(d.status ?? d.state ?? d.phase ?? '');
    const done =
      d.active === false ||
      d.done === true ||
      ['done', 'stop', 'stopped', 'end', 'ended', 'idle', 'finished', 'complete'].includes(state);
    const toolName =
      (d.toolName as string | undefined) ??
      (d.name as string | undefined) ??
      (d.toolCall as { function?: { name?: string } } | undefined)?.function?.name ??
      null;
    online(actorOf(d));
    learnName(d);
    dispatch({
      cid,
      action: {
        type: 'agentStatus',
        status: done ? null : { kind, agentId: actorOf(d), toolName, since: Date.now() },
      },
    });
  };
  on(Ev.AGENT_THINKING, onAgent('thinking'));
  on(Ev.AGENT_TOOL_CALLING, onAgent('tool-calling'));
  const onTyping = (value: boolean) => (f: ServerFrame) => {
    const cid = cidOf(f);
    const who = actorOf(f.data);
    learnName(f.data);
    if (cid && who && who !== c.principal?.id)
      dispatch({ cid, action: { type: 'typing', who, on: value, now: Date.now() } });
  };
  on(Ev.TYPING_START, onTyping(true));
  on(Ev.TYPING_STOP, onTyping(false));
  // Presence is only events: someone who joined before us never told us. When a principal
  // we did not know as online appears, announce ourselves once (debounced) so they learn of us.
  const knownOnline = new Set<string>();
  let announce: ReturnType<typeof setTimeout> | null = null;
  const onPresence = (value: boolean) => (f: ServerFrame) => {
    learnName(f.data);
    const who = actorOf(f.data);
    online(who, value);
    if (!who || who === c.principal?.id) return;
    if (!value) knownOnline.delete(who);
    else if (!knownOnline.has(who)) {
      knownOnline.add(who);
      if (!announce)
        announce = setTimeout(() => {
          announce = null;
          if (alive()) c.notify(Ev.PRESENCE_ONLINE, {});
        }, 300);
    }
  };
  on(Ev.PRESENCE_ONLINE, onPresence(true));
  on(Ev.PRESENCE_OFFLINE, onPresence(false));
  on(Ev.AGENT_ONLINE, onPresence(true));
  on(Ev.AGENT_OFFLINE, onPresence(false));
  on(Ev.ERROR, (f) => setNotice(f.error?.message ?? 'error'));

  /** The server's unread counts and read cursors from a list (docs/protocol.md 3.6). */
  const takeCounts = (list: Conversation[]) => {
    const counts: Record<string, number> = {};
    for (const conv of list) {
      const cid = conv.conversationId;
      learnParticipants(conv);
      readRef.current = { ...readRef.current, [cid]: Math.max(readRef.current[cid] ?? 0, conv.readSeq ?? 0) };
      // Live message:new frames count from here (the join replays from lastSeq).
      const shown = Math.max(conv.lastSeq ?? 0, conv.lastMessage?.seq ?? 0);
      countedRef.current[cid] = Math.max(countedRef.current[cid] ?? 0, shown);
      counts[cid] = cid === openRef.current ? 0 : (conv.unreadCount ?? 0);
    }
    setUnread(counts);
  };
  const refreshList = () => {
    c.listConversations(100)
      .then((list) => {
        if (!alive()) return;
        const sorted = sortConversations(list);
        setConversations(sorted);
        setListError(null);
        takeCounts(sorted);
        sorted.filter((x) => x.status !== 'archived').slice(0, WATCH_MAX).forEach(watch);
      })
      .catch((e: Error) => alive() && setListError(e.message));
    c.listAgents()
      .then((list) => {
        if (!alive() || !list.length) return;
        setAgents(list);
        for (const a of list) {
          learnName({ agentId: a.id, name: a.name });
          if (typeof a.online === 'boolean') online(a.id, a.online);
        }
      })
      .catch(() => undefined); // an older gateway: keep the fallback list
  };
  on(Ev.RECONNECTED, () => refreshList());
  on(Ev.CONNECTED, () => refreshList());

  return {
    stop: () => {
      activityTimers.forEach((t) => clearTimeout(t));
      offs.forEach((f) => f());
    },
  };
}
