/** The Parley chat page: sign-in, conversation list, the open conversation, connection state. */
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { ConversationPane } from './components/ConversationPane';
import { DevPanel } from './components/DevPanel';
import { Avatar } from './components/Avatar';
import { Icon } from './components/Icon';
import { NewChatDialog } from './components/NewChatDialog';
import { Sidebar } from './components/Sidebar';
import { SignIn } from './components/SignIn';
import { displayName } from './names';
import type { ConnectionState } from './protocol';
import { conversationInUrl, pushConversation, replaceConversation } from './route';
import { emptyConv } from './store';
import { useActions } from './useActions';
import { useParley } from './useParley';
import { FileAccess } from './components/Attachments';

const TOKEN_KEY = 'parley.token';
const DEV_KEY = 'parley.devPanel';
const PAGE = 50;
const OLDER_PAGE = 30;

/** Token from `#token=…` (then removed from the address bar) or from this tab's storage. */
function initialToken(): string | null {
  const hash = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  const fromHash = hash.get('token');
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(history.state, '', window.location.pathname + window.location.search);
    return fromHash;
  }
  return sessionStorage.getItem(TOKEN_KEY);
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

export function App() {
  const [token, setToken] = useState<string | null>(initialToken);
  const [signInError, setSignInError] = useState<string | null>(null);
  const refused = useCallback((message: string) => {
    setSignInError(message);
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
  }, []);
  const [openId, setOpenId] = useState<string | null>(null);
  const openIdRef = useRef<string | null>(null);
  openIdRef.current = openId;
  const deleted = useCallback((cid: string) => {
    // Deleted by its owner (maybe on another device): close it if it is open here.
    if (openIdRef.current !== cid) return;
    setOpenId(null);
    replaceConversation(null);
    p.setNotice('This conversation was deleted.');
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);
  const p = useParley(token, refused, deleted);
  const { client, views, dispatch, setNotice } = p;
  const files = useMemo(
    () =>
      client
        ? { absolute: (url: string) => client.absoluteUrl(url), objectUrl: (id: string) => client.attachmentObjectUrl(id) }
        : null,
    [client],
  );
  p.openRef.current = openId;
  const [newChat, setNewChat] = useState(false);
  const [settings, setSettings] = useState(false);
  const [devPanel, setDevPanel] = useState(() => localStorage.getItem(DEV_KEY) === '1');
  const actions = useActions(p, openId);
  const viewsRef = useRef(views);
  viewsRef.current = views;

  // ------------------------------------------------------------------ open a conversation
  /** Show a conversation: its history once, and watch it (switching never leaves one). */
  const show = useCallback(
    async (cid: string | null) => {
      setOpenId(cid);
      if (!cid || !client) return;
      setNotice(null);
      const known = viewsRef.current[cid]?.loaded;
      try {
        if (!known) {
          const [conv, page] = await Promise.all([
            client.getConversation(cid),
            client.messages(cid, { limit: PAGE }),
          ]);
          dispatch({ cid, action: { type: 'conversation', conversation: conv } });
          dispatch({ cid, action: { type: 'history', messages: page.items, hasMore: page.hasMore, older: false } });
          const maxSeq = page.items.reduce((a, m) => Math.max(a, m.seq ?? 0), 0);
          p.markRead(cid, Math.max(maxSeq, conv.lastMessage?.seq ?? 0));
          if (!client.joinedConversations().includes(cid)) await client.join(cid, maxSeq);
        } else {
          p.markRead(cid, client.lastSeq(cid));
          if (!client.joinedConversations().includes(cid)) await client.join(cid);
        }
      } catch (e) {
        setNotice(`Cannot open ${cid}: ${(e as Error).message}`);
        if (!known) {
          setOpenId((o) => (o === cid ? null : o));
          replaceConversation(null);
        }
      }
    },
    [client, dispatch, p, setNotice],
  );
  const open = useCallback(
    (cid: string | null) => {
      pushConversation(cid);
      void show(cid);
    },
    [show],
  );

  // Unread messages in the tab title; Esc or a click elsewhere closes the settings menu.
  const unreadTotal = Object.values(p.unread).reduce((a, n) => a + n, 0);
  useEffect(() => {
    document.title = unreadTotal ? `(${unreadTotal}) Parley` : 'Parley';
  }, [unreadTotal]);
  useEffect(() => {
    if (!settings) return;
    const close = (e: Event) => {
      if (e instanceof KeyboardEvent ? e.key === 'Escape' : !(e.target as Element).closest?.('.topbar'))
        setSettings(false);
    };
    document.addEventListener('keydown', close);
    document.addEventListener('mousedown', close);
    return () => {
      document.removeEventListener('keydown', close);
      document.removeEventListener('mousedown', close);
    };
  }, [settings]);

  // The address names the open conversation: deep links and reloads open it, Back works.
  useEffect(() => {
    if (!client) return;
    void show(conversationInUrl());
    const onPop = () => void show(conversationInUrl());
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client]);

  const loadOlder = useCallback(async () => {
    if (!client || !openId) return;
    const v = views[openId];
    if (!v || v.loadingOlder || !v.hasMore || v.oldestSeq == null) return;
    dispatch({ cid: openId, action: { type: 'loadingOlder', value: true } });
    try {
      const page = await client.messages(openId, { beforeSeq: v.oldestSeq, limit: OLDER_PAGE });
      dispatch({ cid: openId, action: { type: 'history', messages: page.items, hasMore: page.hasMore, older: true } });
    } catch (e) {
      dispatch({ cid: openId, action: { type: 'loadingOlder', value: false } });
      setNotice(`Cannot load older messages: ${(e as Error).message}`);
    }
  }, [client, dispatch, openId, setNotice, views]);

  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
    setOpenId(null);
  };

  // ------------------------------------------------------------------ render
  if (!token)
    return (
      <SignIn
        onToken={(t) => {
          sessionStorage.setItem(TOKEN_KEY, t);
          setSignInError(null);
          setToken(t);
        }}
        error={signInError}
        busy={false}
      />
    );

  const view = openId ? (views[openId] ?? emptyConv(openId)) : null;
  const name = (id: string | null | undefined) => displayName(id, p.names);
  const selfName = p.self ? name(p.self) : '…';

  return (
    <div className={`app ${openId ? 'has-open' : ''}`}>
      <header className="topbar">
        <h1>
          <span aria-hidden="true" className="logo" /> <span className="brand">Parley</span>
        </h1>
        <div
          className={`conn conn-${p.connection}`}
          role="status"
          aria-live="polite"
          data-testid="connection-state"
          data-state={p.connection}
          data-reconnects={p.reconnects}
          title={p.instance ? `gateway ${p.instance}` : undefined}
        >
          <span className="dot" aria-hidden="true" />
          <span className="conn-label">{connectionLabel(p.connection)}</span>
          {p.connection === 'open' && p.instance ? <span className="muted instance"> · {p.instance}</span> : null}
        </div>
        <div className="me">
          <Avatar id={p.self ?? '?'} name={selfName} />
          <span className="me-name" data-testid="self" data-principal-id={p.self ?? ''} title={p.self ?? ''}>
            {p.self ? selfName : '…'}
          </span>
          <button
            type="button"
            className="icon-button"
            aria-label="Settings"
            aria-expanded={settings}
            data-testid="settings-button"
            onClick={() => setSettings((s) => !s)}
          >
            <Icon name="settings" size={18} />
          </button>
        </div>
        {settings && (
          <div className="settings-menu" role="group" aria-label="settings" data-testid="settings">
            <label className="check">
              <input
                type="checkbox"
                checked={devPanel}
                data-testid="dev-toggle"
                onChange={(e) => {
                  setDevPanel(e.target.checked);
                  localStorage.setItem(DEV_KEY, e.target.checked ? '1' : '0');
                }}
              />
              Developer panel
            </label>
            <button type="button" onClick={signOut} data-testid="sign-out">
              Sign out
            </button>
          </div>
        )}
      </header>
      {p.notice && (
        <div className="notice" role="alert" data-testid="notice">
          {p.notice}
          <button type="button" className="link" onClick={() => setNotice(null)} aria-label="Dismiss">
            ✕
          </button>
        </div>
      )}
      <div className="layout">
        <Sidebar
          conversations={p.conversations}
          openId={openId}
          error={p.listError}
          unread={p.unread}
          names={p.names}
          self={p.self}
          disabled={!client}
          onOpen={open}
          onNewChat={() => setNewChat(true)}
        />
        <FileAccess.Provider value={files}>
        <main className="main">
          {view ? (
            <ConversationPane
              view={view}
              self={p.self}
              names={p.names}
              agents={p.agents}
              presence={p.presence}
              connection={p.connection}
              actions={actions}
              onLoadOlder={() => void loadOlder()}
              onBack={() => open(null)}
              onDeleted={() => open(null)}
            />
          ) : (
            <div className="empty" data-testid="empty-state">
              <h2>{p.conversations.length ? 'Pick a conversation' : 'Start your first chat'}</h2>
              <p className="muted">
                Start a new chat with an agent (try “search AI news” with the demo agent), or invite people
                by their id.
              </p>
              <button type="button" className="primary" onClick={() => setNewChat(true)} disabled={!client}>
                New chat
              </button>
            </div>
          )}
          {devPanel && <DevPanel client={client} log={p.log} openId={openId} />}
        </main>
        </FileAccess.Provider>
      </div>
      {newChat && (
        <NewChatDialog
          agents={p.agents}
          presence={p.presence}
          onClose={() => setNewChat(false)}
          onCreate={async (n) => {
            const conv = await actions.create(n);
            if (conv) {
              setNewChat(false);
              open(conv.conversationId);
            }
          }}
        />
      )}
    </div>
  );
}
