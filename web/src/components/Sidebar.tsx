/** The conversation list: newest first, search by title, unread counts, archived ones apart. */
import { useMemo, useState } from 'react';
import type { Conversation } from '../protocol';
import { exactTime, relativeTime } from '../time';
import { activityOf, previewOf } from '../views';

export interface SidebarProps {
  conversations: Conversation[];
  openId: string | null;
  error: string | null;
  unread: Record<string, number>; // the server's counts (docs/protocol.md 3.6)
  names: Record<string, string>;
  self: string | null;
  disabled: boolean;
  onOpen: (cid: string) => void;
  onNewChat: () => void;
}

export function Sidebar(props: SidebarProps) {
  const { conversations, openId, unread } = props;
  const [query, setQuery] = useState('');
  const [archived, setArchived] = useState(false);
  const shown = useMemo(() => {
    const q = query.trim().toLowerCase();
    return conversations.filter(
      (c) => (c.status === 'archived') === archived && (!q || (c.title ?? '').toLowerCase().includes(q)),
    );
  }, [conversations, query, archived]);
  const archivedCount = conversations.filter((c) => c.status === 'archived').length;

  return (
    <nav className="sidebar" aria-label="conversations">
      <div className="sidebar-top">
        <button
          type="button"
          className="primary new-chat"
          onClick={props.onNewChat}
          disabled={props.disabled}
          data-testid="new-chat"
        >
          + New chat
        </button>
        <label htmlFor="conv-search" className="sr-only">
          Search conversations by title
        </label>
        <input
          id="conv-search"
          type="search"
          placeholder="Search chats"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
          data-testid="conversation-search"
        />
      </div>
      {props.error && (
        <p className="error-text" role="alert">
          {props.error}
        </p>
      )}
      <ul className="conv-list" data-testid="conversation-list" aria-label={archived ? 'archived chats' : 'chats'}>
        {shown.length === 0 && (
          <li className="muted list-empty">
            {query ? 'No chat has that title.' : archived ? 'No archived chats.' : 'No chats yet: start one with “New chat”.'}
          </li>
        )}
        {shown.map((c) => {
          const n = unread[c.conversationId] ?? 0;
          const active = openId === c.conversationId;
          const when = activityOf(c);
          return (
            <li key={c.conversationId}>
              <button
                type="button"
                className={`conv ${active ? 'active' : ''} ${n ? 'has-unread' : ''}`}
                aria-current={active ? 'true' : undefined}
                onClick={() => props.onOpen(c.conversationId)}
                data-testid="conversation-item"
                data-conversation-id={c.conversationId}
                data-unread={n}
              >
                <span className="conv-row">
                  <span className="conv-title">{c.title}</span>
                  <time className="conv-time muted" dateTime={when} title={exactTime(when)}>
                    {relativeTime(when)}
                  </time>
                </span>
                <span className="conv-row">
                  <span className="conv-last muted" data-testid="conversation-preview">
                    {previewOf(c)}
                  </span>
                  {n > 0 && (
                    <span className="unread" data-testid="unread-count" aria-label={`${n} unread`}>
                      {n > 99 ? '99+' : n}
                    </span>
                  )}
                </span>
              </button>
            </li>
          );
        })}
      </ul>
      {(archivedCount > 0 || archived) && (
        <button type="button" className="link archived-toggle" onClick={() => setArchived((a) => !a)} data-testid="show-archived">
          {archived ? '← Back to chats' : `Archived (${archivedCount})`}
        </button>
      )}
    </nav>
  );
}
