/** The Parley chat page: sign-in, conversation list, the open conversation, connection state. */
import { useCallback, useEffect, useReducer, useRef, useState, type FormEvent } from 'react';
import { ConversationPane } from './components/ConversationPane';
import { SignIn } from './components/SignIn';
import {
  actorOf,
  Ev,
  newClientMessageId,
  ParleyClient,
  ParleyError,
  type ConnectionState,
  type Conversation,
  type Message,
  type ServerFrame,
  type StreamDelta,
  type StreamEnd,
  type StreamStart,
} from './protocol';
import { emptyConv, reduce, type Action, type AgentStatus, type ConvView } from './store';

const TOKEN_KEY = 'parley.token';
const PAGE = 50;
const OLDER_PAGE = 30;

type Views = Record<string, ConvView>;
type ViewsAction = { cid: string; action: Action } | { cid: '*'; action: Action };

function viewsReducer(state: Views, a: ViewsAction): Views {
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

/** Token from `#token=…` (then removed from the address bar) or from this tab's storage. */
function initialToken(): string | null {
  const hash = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  const fromHash = hash.get('token');
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, '', window.location.pathname + window.location.search);
    return fromHash;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

/** This origin first, then any fallback gateways given as `?gateways=http://h:p,http://h:p`. */
function gatewayUrls(): string[] {
  const extra = new URLSearchParams(window.location.search).get('gateways');
  const urls = [window.location.origin];
  for (const u of (extra ?? '').split(',')) {
    const v = u.trim();
    if (v && !urls.includes(v)) urls.push(v);
  }
  return urls;
}

function connectionLabel(s: ConnectionState): string {
  switch (s) {
    case 'open':
      return 'Connected';
    case 'connecting':
      return 'Connecting…';
    case 'reconnecting':
      return 'Reconnecting…';
    case 'closed':
      return 'Disconnected';
    default:
      return 'Offline';
  }
}

function sortConversations(list: Conversation[]): Conversation[] {
  const key = (c: Conversation) => c.lastMessage?.createdAt ?? c.updatedAt ?? c.createdAt ?? '';
  return [...list].sort((a, b) => key(b).localeCompare(key(a)));
}

export function App() {
  const [token, setToken] = useState<string | null>(initialToken);
  const [signInError, setSignInError] = useState<string | null>(null);
  const [client, setClient] = useState<ParleyClient | null>(null);
  const [connection, setConnection] = useState<ConnectionState>('idle');
  const [self, setSelf] = useState<string | null>(null);
  const [instance, setInstance] = useState<string | null>(null);
  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [listError, setListError] = useState<string | null>(null);
  const [openId, setOpenId] = useState<string | null>(null);
  const [views, dispatch] = useReducer(viewsReducer, {});
  const [presence, setPresence] = useState<Record<string, boolean>>({});
  const [notice, setNotice] = useState<string | null>(null);
  const [reconnects, setReconnects] = useState(0);
  const [log, setLog] = useState<string[]>([]);
  const [attempt, setAttempt] = useState(0);
  const streamConv = useRef(new Map<string, string>());
  const openRef = useRef<string | null>(null);
  openRef.current = openId;

  // ------------------------------------------------------------------ connect
  useEffect(() => {
    if (!token) return;
    const c = new ParleyClient({ baseUrls: gatewayUrls(), token });
    let alive = true;
    let retryTimer: ReturnType<typeof setTimeout> | null = null;
    const offState = c.onState((s) => {
      if (!alive) return;
      setConnection(s);
      setReconnects(c.reconnects);
      setInstance(c.instanceId);
    });
    const offs: Array<() => void> = [offState];
    const on = (ev: string, fn: (f: ServerFrame) => void) => offs.push(c.on(ev, fn));
    const cidOf = (f: ServerFrame): string | null => {
      const d = (f.data ?? {}) as Record<string, unknown>;
      return (
        f.conversationId ??
        (typeof d.conversationId === 'string' ? d.conversationId : null) ??
        (typeof d.streamId === 'string' ? (streamConv.current.get(d.streamId) ?? null) : null)
      );
    };

    on('*', (f) => {
      const line = `${new Date().toISOString().slice(11, 23)} ${f.event}${
        f.seq != null ? ` #${f.seq}` : ''
      }${f.conversationId ? ` ${f.conversationId}` : ''}`;
      setLog((l) => [line, ...l].slice(0, 60));
    });
    const onMessage = (f: ServerFrame) => {
      const m = f.data as Message;
      const cid = cidOf(f) ?? m?.conversationId;
      if (!m || !cid) return;
      const msg = m.seq == null && f.seq != null && f.event === Ev.MESSAGE_NEW ? { ...m, seq: f.seq } : m;
      dispatch({ cid, action: { type: 'message', message: msg } });
      if (f.event === Ev.MESSAGE_NEW)
        setConversations((list) =>
          list.map((cv) =>
            cv.conversationId === cid
              ? {
                  ...cv,
                  lastMessage: {
                    content: msg.content,
                    role: msg.role,
                    createdAt: msg.createdAt ?? new Date().toISOString(),
                    messageId: msg._id,
                    seq: msg.seq,
                  },
                }
              : cv,
          ),
        );
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
      // The data is the stored message with deletedAt: it stays in place as a placeholder,
      // like in the stored history.
      const d = (f.data ?? {}) as Partial<Message> & { messageId?: string };
      const cid = cidOf(f);
      if (cid && d._id && d.role)
        dispatch({ cid, action: { type: 'message', message: d as Message } });
      else if (cid && d.messageId)
        dispatch({ cid, action: { type: 'deleted', messageId: d.messageId } });
    });
    const onConv = (f: ServerFrame) => {
      const conv = f.data as Conversation;
      if (!conv || !conv.conversationId) return;
      dispatch({ cid: conv.conversationId, action: { type: 'conversation', conversation: conv } });
      setConversations((list) =>
        sortConversations([...list.filter((x) => x.conversationId !== conv.conversationId), conv]),
      );
    };
    on(Ev.CONVERSATION_CREATED, onConv);
    on(Ev.CONVERSATION_JOINED, (f) => {
      const conv = (f.data as { conversation?: Conversation } | undefined)?.conversation;
      if (conv?.conversationId)
        dispatch({ cid: conv.conversationId, action: { type: 'conversation', conversation: conv } });
    });
    on(Ev.CONVERSATION_UPDATED, onConv);
    on(Ev.MESSAGE_STREAM_START, (f) => {
      const d = f.data as StreamStart;
      const cid = cidOf(f);
      if (!d?.streamId || !cid) return;
      streamConv.current.set(d.streamId, cid);
      const agent = d.agentId;
      if (agent) setPresence((p) => (p[agent] ? p : { ...p, [agent]: true }));
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
        ((d.toolCall as { function?: { name?: string } } | undefined)?.function?.name ?? null);
      const agent = actorOf(d);
      if (agent) setPresence((p) => (p[agent] ? p : { ...p, [agent]: true }));
      dispatch({
        cid,
        action: {
          type: 'agentStatus',
          status: done
            ? null
            : { kind, agentId: actorOf(d), toolName: toolName ?? null, since: Date.now() },
        },
      });
    };
    on(Ev.AGENT_THINKING, onAgent('thinking'));
    on(Ev.AGENT_TOOL_CALLING, onAgent('tool-calling'));
    const onTyping = (on: boolean) => (f: ServerFrame) => {
      const cid = cidOf(f);
      const who = actorOf(f.data);
      if (cid && who && who !== c.principal?.id)
        dispatch({ cid, action: { type: 'typing', who, on, now: Date.now() } });
    };
    on(Ev.TYPING_START, onTyping(true));
    on(Ev.TYPING_STOP, onTyping(false));
    const onPresence = (online: boolean) => (f: ServerFrame) => {
      const who = actorOf(f.data);
      if (who) setPresence((p) => ({ ...p, [who]: online }));
    };
    on(Ev.PRESENCE_ONLINE, onPresence(true));
    on(Ev.PRESENCE_OFFLINE, onPresence(false));
    on(Ev.AGENT_ONLINE, onPresence(true));
    on(Ev.AGENT_OFFLINE, onPresence(false));
    on(Ev.ERROR, (f) => setNotice(f.error?.message ?? 'error'));
    on(Ev.RECONNECTED, () => refreshList());
    on(Ev.CONNECTED, () => refreshList());

    const refreshList = () => {
      c.listConversations()
        .then((list) => {
          if (!alive) return;
          setConversations(sortConversations(list));
          setListError(null);
        })
        .catch((e: Error) => alive && setListError(e.message));
    };

    setSignInError(null);
    // An HTTP call first gives a clear answer for a bad token (the WebSocket only says 1006).
    c.listConversations()
      .then(() => c.connect())
      .then((d) => {
        if (!alive) return;
        setNotice(null);
        setSelf(d.principal?.id ?? null);
        setClient(c);
        c.notify(Ev.PRESENCE_ONLINE, {});
      })
      .catch((e: Error) => {
        if (!alive) return;
        c.close();
        const unauthorized = e instanceof ParleyError && /UNAUTHORIZED|HTTP_401/.test(e.code);
        if (unauthorized) {
          setSignInError(`The token was refused: ${e.message}`);
          sessionStorage.removeItem(TOKEN_KEY);
          setToken(null);
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
      offs.forEach((f) => f());
      c.close();
      setClient(null);
    };
  }, [token, attempt]);

  // Expire typing indicators.
  useEffect(() => {
    const t = setInterval(() => dispatch({ cid: '*', action: { type: 'tick', now: Date.now() } }), 1000);
    return () => clearInterval(t);
  }, []);

  // ------------------------------------------------------------------ open a conversation
  const openConversation = useCallback(
    async (cid: string) => {
      if (!client) return;
      setNotice(null);
      const prev = openRef.current;
      if (prev && prev !== cid) void client.leave(prev);
      setOpenId(cid);
      const known = views[cid]?.loaded;
      try {
        if (!known) {
          const [conv, page] = await Promise.all([
            client.getConversation(cid),
            client.messages(cid, { limit: PAGE }),
          ]);
          dispatch({ cid, action: { type: 'conversation', conversation: conv } });
          dispatch({
            cid,
            action: { type: 'history', messages: page.items, hasMore: page.hasMore, older: false },
          });
          const maxSeq = page.items.reduce((a, m) => Math.max(a, m.seq ?? 0), 0);
          await client.join(cid, maxSeq);
        } else {
          await client.join(cid);
        }
      } catch (e) {
        setNotice(`Cannot open ${cid}: ${(e as Error).message}`);
        if (!known) setOpenId((o) => (o === cid ? null : o));
      }
    },
    [client, views],
  );

  // Open the conversation named in the address (?c=…) once connected.
  const autoOpened = useRef(false);
  useEffect(() => {
    if (!client || autoOpened.current) return;
    autoOpened.current = true;
    const cid = new URLSearchParams(window.location.search).get('c');
    if (cid) void openConversation(cid);
  }, [client, openConversation]);

  const loadOlder = useCallback(async () => {
    if (!client || !openId) return;
    const v = views[openId];
    if (!v || v.loadingOlder || !v.hasMore || v.oldestSeq == null) return;
    dispatch({ cid: openId, action: { type: 'loadingOlder', value: true } });
    try {
      const page = await client.messages(openId, { beforeSeq: v.oldestSeq, limit: OLDER_PAGE });
      dispatch({
        cid: openId,
        action: { type: 'history', messages: page.items, hasMore: page.hasMore, older: true },
      });
    } catch (e) {
      dispatch({ cid: openId, action: { type: 'loadingOlder', value: false } });
      setNotice(`Cannot load older messages: ${(e as Error).message}`);
    }
  }, [client, openId, views]);

  const send = useCallback(
    (content: string) => {
      if (!client || !openId) return;
      const cid = openId;
      const clientMessageId = newClientMessageId();
      const local: Message = {
        _id: `local:${clientMessageId}`,
        conversationId: cid,
        role: 'user',
        messageType: 'text',
        content,
        clientMessageId,
        messageStatus: 'sending',
        createdBy: self,
        createdAt: new Date().toISOString(),
      };
      dispatch({ cid, action: { type: 'message', message: local } });
      client
        .sendMessage(cid, content, clientMessageId)
        .then((stored) => {
          dispatch({ cid, action: { type: 'deleted', messageId: local._id } });
          dispatch({ cid, action: { type: 'message', message: stored } });
        })
        .catch((e: Error) => {
          dispatch({
            cid,
            action: { type: 'message', message: { ...local, messageStatus: 'failed' } },
          });
          setNotice(`Message not sent: ${e.message}`);
        });
    },
    [client, openId, self],
  );

  const stop = useCallback(() => {
    if (!client || !openId) return;
    client.stop(openId).catch((e: Error) => setNotice(`Stop failed: ${e.message}`));
  }, [client, openId]);

  const typing = useCallback(
    (on: boolean) => {
      if (client && openId)
        client.notify(on ? Ev.TYPING_START : Ev.TYPING_STOP, { conversationId: openId });
    },
    [client, openId],
  );

  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
    setOpenId(null);
    setConversations([]);
    setConnection('idle');
  };

  // ------------------------------------------------------------------ render
  if (!token || (!client && connection !== 'connecting' && signInError))
    return (
      <SignIn
        onToken={(t) => {
          sessionStorage.setItem(TOKEN_KEY, t);
          setToken(t);
        }}
        error={signInError}
        busy={false}
      />
    );

  const view = openId ? (views[openId] ?? emptyConv(openId)) : null;

  return (
    <div className={`app ${openId ? 'has-open' : ''}`}>
      <header className="topbar">
        <h1>
          <span aria-hidden="true" className="logo" /> Parley
        </h1>
        <div
          className={`conn conn-${connection}`}
          role="status"
          aria-live="polite"
          data-testid="connection-state"
          data-state={connection}
          data-reconnects={reconnects}
        >
          <span className="dot" aria-hidden="true" />
          {connectionLabel(connection)}
          {connection === 'open' && instance ? <span className="muted"> · {instance}</span> : null}
        </div>
        <div className="me">
          <span data-testid="self">{self ?? '…'}</span>
          <button type="button" onClick={signOut} className="link">
            Sign out
          </button>
        </div>
      </header>
      {notice && (
        <div className="notice" role="alert" data-testid="notice">
          {notice}
          <button type="button" className="link" onClick={() => setNotice(null)} aria-label="Dismiss">
            ✕
          </button>
        </div>
      )}
      <div className="layout">
        <Sidebar
          conversations={conversations}
          openId={openId}
          error={listError}
          disabled={!client}
          onOpen={(cid) => void openConversation(cid)}
          onCreate={async (title, agentId, participants) => {
            if (!client) return;
            try {
              const conv = await client.createConversation({
                title: title || 'New conversation',
                ...(agentId ? { agentId } : {}),
                ...(participants.length ? { participants } : {}),
              });
              setConversations((l) =>
                sortConversations([...l.filter((x) => x.conversationId !== conv.conversationId), conv]),
              );
              dispatch({
                cid: conv.conversationId,
                action: { type: 'conversation', conversation: conv },
              });
              await openConversation(conv.conversationId);
            } catch (e) {
              setNotice(`Cannot create: ${(e as Error).message}`);
            }
          }}
        />
        <main className="main">
          {view ? (
            <ConversationPane
              view={view}
              self={self}
              presence={presence}
              connection={connection}
              onSend={send}
              onStop={stop}
              onTyping={typing}
              onLoadOlder={() => void loadOlder()}
              onSwitchAgent={(agentId) => {
                if (!client || !openId) return;
                client
                  .request<Conversation>(Ev.CONVERSATION_UPDATE, { conversationId: openId, agentId })
                  .then((conv) =>
                    dispatch({ cid: openId, action: { type: 'conversation', conversation: conv } }),
                  )
                  .catch((e: Error) => setNotice(`Cannot switch agent: ${e.message}`));
              }}
              onBack={() => {
                if (client && openId) void client.leave(openId);
                setOpenId(null);
              }}
            />
          ) : (
            <div className="empty muted">
              <p>Pick a conversation, or create one with an agent (try “search AI news”).</p>
            </div>
          )}
          <DevPanel client={client} log={log} openId={openId} />
        </main>
      </div>
    </div>
  );
}

function Sidebar({
  conversations,
  openId,
  error,
  disabled,
  onOpen,
  onCreate,
}: {
  conversations: Conversation[];
  openId: string | null;
  error: string | null;
  disabled: boolean;
  onOpen: (cid: string) => void;
  onCreate: (title: string, agentId: string, participants: string[]) => Promise<void>;
}) {
  const [title, setTitle] = useState('');
  const [agent, setAgent] = useState('agent-demo');
  const [joinId, setJoinId] = useState('');
  const [invite, setInvite] = useState('');
  const [busy, setBusy] = useState(false);
  const create = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    try {
      const people = invite
        .split(/[\s,]+/)
        .map((x) => x.trim())
        .filter(Boolean);
      await onCreate(title.trim(), agent.trim(), people);
      setTitle('');
      setInvite('');
    } finally {
      setBusy(false);
    }
  };
  return (
    <nav className="sidebar" aria-label="conversations">
      <form onSubmit={create} className="new-conv" aria-label="new conversation">
        <h2>New conversation</h2>
        <label htmlFor="new-title">Title</label>
        <input
          id="new-title"
          value={title}
          onChange={(e) => setTitle(e.target.value)}
          placeholder="New conversation"
          data-testid="new-title"
        />
        <label htmlFor="new-agent">Agent id</label>
        <input
          id="new-agent"
          value={agent}
          onChange={(e) => setAgent(e.target.value)}
          data-testid="new-agent"
        />
        <label htmlFor="new-invite">Invite users (ids, comma-separated)</label>
        <input
          id="new-invite"
          value={invite}
          onChange={(e) => setInvite(e.target.value)}
          placeholder="user-2"
          data-testid="new-invite"
        />
        <button type="submit" disabled={disabled || busy} data-testid="create-conversation">
          {busy ? 'Creating…' : 'Create'}
        </button>
      </form>
      <form
        className="join-conv"
        aria-label="join a conversation by id"
        onSubmit={(e) => {
          e.preventDefault();
          if (joinId.trim()) onOpen(joinId.trim());
          setJoinId('');
        }}
      >
        <label htmlFor="join-id">Join by id</label>
        <div className="row">
          <input
            id="join-id"
            value={joinId}
            onChange={(e) => setJoinId(e.target.value)}
            data-testid="join-id"
          />
          <button type="submit" disabled={disabled || !joinId.trim()}>
            Join
          </button>
        </div>
      </form>
      <h2 className="list-title">My conversations</h2>
      {error && (
        <p className="error-text" role="alert">
          {error}
        </p>
      )}
      <ul className="conv-list" data-testid="conversation-list">
        {conversations.length === 0 && <li className="muted">None yet.</li>}
        {conversations.map((c) => (
          <li key={c.conversationId}>
            <button
              type="button"
              className={`conv ${openId === c.conversationId ? 'active' : ''}`}
              aria-current={openId === c.conversationId ? 'true' : undefined}
              onClick={() => onOpen(c.conversationId)}
              data-testid="conversation-item"
              data-conversation-id={c.conversationId}
            >
              <span className="conv-title">{c.title}</span>
              <span className="conv-last muted">
                {c.lastMessage
                  ? c.lastMessage.content.replace(/[*_`#>]+/g, '').slice(0, 80) || '…'
                  : c.agentId
                    ? `with ${c.agentId}`
                    : ''}
              </span>
            </button>
          </li>
        ))}
      </ul>
    </nav>
  );
}

function DevPanel({
  client,
  log,
  openId,
}: {
  client: ParleyClient | null;
  log: string[];
  openId: string | null;
}) {
  if (!client) return null;
  return (
    <details className="devpanel" data-testid="dev-panel">
      <summary>Developer</summary>
      <dl>
        <dt>session</dt>
        <dd data-testid="dev-session">{client.sessionId}</dd>
        <dt>gateway</dt>
        <dd>
          {client.instanceId} ({client.currentBase})
        </dd>
        {openId && (
          <>
            <dt>lastSeq</dt>
            <dd data-testid="dev-last-seq">{client.lastSeq(openId)}</dd>
          </>
        )}
        <dt>reconnects</dt>
        <dd>{client.reconnects}</dd>
        <dt>duplicates dropped</dt>
        <dd data-testid="dev-duplicates">{client.duplicatesDropped}</dd>
      </dl>
      <button type="button" onClick={() => client.dropConnection()}>
        Simulate a dropped connection
      </button>
      <pre className="eventlog" aria-label="recent events">
        {log.join('\n')}
      </pre>
    </details>
  );
}
