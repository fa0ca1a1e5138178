/**
 * The page's connection to Parley: one ParleyClient per token (connect, retry, close), the
 * React state its events are folded into (conversation list, per-conversation views,
 * presence, display names, unread counts, the agents the system serves) and the read
 * cursor. The events themselves are followed in parleyEvents.ts.
 *
 * Unread counts and read positions are the server's (docs/protocol.md 3.6): the list brings
 * `unreadCount`/`readSeq`, `conversation:read` moves the cursor (and tells the user's other
 * tabs and devices), watched conversations count their `message:new` live, and the others are
 * refreshed on `conversation:activity`.
 */
import { useCallback, useEffect, useReducer, useRef, useState } from 'react';
import { followEvents, rememberName } from './parleyEvents';
import {
  Ev,
  ParleyClient,
  ParleyError,
  type AgentInfo,
  type ConnectionState,
  type Conversation,
} from './protocol';
import { viewsReducer } from './views';

export const FALLBACK_AGENTS: AgentInfo[] = [
  { id: 'agent-demo', name: 'Demo agent', description: 'Parley’s built-in demo agent' },
];

/** This origin first, then any fallback gateways given as `?gateways=http://h:p,http://h:p`. */
export function gatewayUrls(): string[] {
  const extra = new URLSearchParams(window.location.search).get('gateways');
  const urls = [window.location.origin];
  for (const u of (extra ?? '').split(',')) {
    const v = u.trim();
    if (v && !urls.includes(v)) urls.push(v);
  }
  return urls;
}

/** conversation:read goes at once, then at most once per conversation per this many ms. */
const READ_DEBOUNCE_MS = 300;

export function useParley(
  token: string | null,
  onRefused: (message: string) => void,
  onDeleted: (conversationId: string) => void,
) {
  const [client, setClient] = useState<ParleyClient | null>(null);
  const [connection, setConnection] = useState<ConnectionState>('idle');
  const [self, setSelf] = useState<string | null>(null);
  const [instance, setInstance] = useState<string | null>(null);
  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [listError, setListError] = useState<string | null>(null);
  const [views, dispatch] = useReducer(viewsReducer, {});
  const [presence, setPresence] = useState<Record<string, boolean>>({});
  const [names, setNames] = useState<Record<string, string>>({});
  const [agents, setAgents] = useState<AgentInfo[]>(FALLBACK_AGENTS);
  const [unread, setUnread] = useState<Record<string, number>>({});
  const [notice, setNotice] = useState<string | null>(null);
  const [reconnects, setReconnects] = useState(0);
  const [log, setLog] = useState<string[]>([]);
  const [attempt, setAttempt] = useState(0);
  const streamConv = useRef(new Map<string, string>());
  const openRef = useRef<string | null>(null);
  // My read cursor per conversation (the server's, moved forward here as I read).
  const readRef = useRef<Record<string, number>>({});
  // The highest seq already counted as unread per conversation (no message counted twice).
  const countedRef = useRef<Record<string, number>>({});
  const readTimers = useRef(new Map<string, ReturnType<typeof setTimeout>>());
  const sentRef = useRef<Record<string, number>>({}); // the newest seq sent per conversation
  const clientRef = useRef<ParleyClient | null>(null);
  const selfRef = useRef<string | null>(null);
  const refusedRef = useRef(onRefused);
  refusedRef.current = onRefused;
  const deletedRef = useRef(onDeleted);
  deletedRef.current = onDeleted;

  /** Everything up to `seq` in `cid` is read (the open conversation, while shown). */
  const markRead = useCallback((cid: string, seq: number | null | undefined) => {
    setUnread((u) => (u[cid] ? { ...u, [cid]: 0 } : u));
    if (seq == null || seq <= (readRef.current[cid] ?? 0)) return;
    readRef.current = { ...readRef.current, [cid]: seq };
    countedRef.current[cid] = Math.max(countedRef.current[cid] ?? 0, seq);
    // Throttled: the first read goes at once, later ones within the window as one (the newest).
    const send = () => {
      const c = clientRef.current;
      const newest = readRef.current[cid];
      if (!c || newest == null || newest <= (sentRef.current[cid] ?? 0)) return;
      sentRef.current[cid] = newest;
      c.markRead(cid, newest)
        .then((r) => {
          if (cid !== openRef.current) setUnread((u) => ({ ...u, [cid]: r.unreadCount }));
        })
        .catch(() => {
          sentRef.current[cid] = 0; // not applied: the next read sends again
        });
    };
    const timers = readTimers.current;
    if (timers.has(cid)) return; // the pending one sends the newest seq
    send();
    timers.set(
      cid,
      setTimeout(() => {
        timers.delete(cid);
        send();
      }, READ_DEBOUNCE_MS),
    );
  }, []);

  useEffect(() => {
    if (!token) return;
    const c = new ParleyClient({ baseUrls: gatewayUrls(), token });
    clientRef.current = c;
    let alive = true;
    let retryTimer: ReturnType<typeof setTimeout> | null = null;
    const offState = c.onState((s) => {
      if (!alive) return;
      setConnection(s);
      setReconnects(c.reconnects);
      setInstance(c.instanceId);
    });
    const events = followEvents(c, {
      alive: () => alive,
      dispatch,
      setConversations,
      setListError,
      setPresence,
      setNames,
      setAgents,
      setUnread,
      setNotice,
      setLog,
      streamConv: streamConv.current,
      openRef,
      readRef,
      countedRef,
      markRead,
      onDeleted: (cid) => deletedRef.current(cid),
    });

    // An HTTP call first gives a clear answer for a bad token (the WebSocket only says 1006).
    c.listConversations()
      .then(() => c.connect())
      .then((d) => {
        if (!alive) return;
        setNotice(null);
        const me = d.principal?.id ?? null;
        selfRef.current = me;
        if (me && d.principal?.name) rememberName(setNames, { principalId: me, name: d.principal.name });
        setSelf(me);
        setClient(c);
        c.notify(Ev.PRESENCE_ONLINE, {});
      })
      .catch((e: Error) => {
        if (!alive) return;
        c.close();
        if (e instanceof ParleyError && /UNAUTHORIZED|HTTP_401/.test(e.code)) {
          refusedRef.current(`The token was refused: ${e.message}`);
          return;
        }
        // The gateway is unreachable (or failing): keep the token and try again.
        setNotice(`Cannot reach the gateway (${e.message}); retrying…`);
        retryTimer = setTimeout(() => setAttempt((a) => a + 1), 3000);
      });
    (window as unknown as { parley?: ParleyClient }).parley = c; // for developers and tests
    return () => {
      alive = false;
      if (retryTimer) clearTimeout(retryTimer);
      readTimers.current.forEach((t) => clearTimeout(t));
      readTimers.current.clear();
      readRef.current = {};
      countedRef.current = {};
      sentRef.current = {};
      clientRef.current = null;
      offState();
      events.stop();
      c.close();
      setClient(null);
      setConversations([]);
      setConnection('idle');
      dispatch({ reset: true });
      setUnread({});
      setPresence({});
      setNames({});
      setLog([]);
    };
  }, [token, attempt, markRead]);

  // Expire typing indicators.
  useEffect(() => {
    const t = setInterval(() => dispatch({ cid: '*', action: { type: 'tick', now: Date.now() } }), 1000);
    return () => clearInterval(t);
  }, []);

  return {
    client,
    connection,
    self,
    instance,
    conversations,
    setConversations,
    listError,
    views,
    dispatch,
    presence,
    names,
    agents,
    unread,
    markRead,
    notice,
    setNotice,
    reconnects,
    log,
    openRef,
  };
}

export type Parley = ReturnType<typeof useParley>;
