/** The open conversation: header, history grouped into turns, live status, composer. */
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import { displayName } from '../names';
import type { AgentInfo, ConnectionState, Message } from '../protocol';
import { agentBusy, receiptOf, resultsByCallId, type ConvView } from '../store';
import { dayKey, dayLabel } from '../time';
import { groupItems } from '../turns';
import type { Actions } from '../useActions';
import { Composer } from './Composer';
import { MessageActions } from './MessageActions';
import { MessageItem } from './MessageItem';
import { PaneHeader } from './PaneHeader';
import { Turn } from './Turn';

export interface PaneProps {
  view: ConvView;
  self: string | null;
  names: Record<string, string>;
  agents: AgentInfo[];
  presence: Record<string, boolean>;
  connection: ConnectionState;
  actions: Actions;
  onLoadOlder: () => void;
  onBack: () => void;
  onDeleted: () => void;
}

export function ConversationPane(props: PaneProps) {
  const { view, self, names, connection, actions } = props;
  const results = useMemo(() => resultsByCallId(view.messages), [view.messages]);
  const items = useMemo(() => groupItems(view.messages, view.streams), [view.messages, view.streams]);
  const byId = useMemo(() => new Map(view.messages.map((m) => [m._id, m])), [view.messages]);
  const busy = agentBusy(view);
  const listRef = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);
  const prevHeight = useRef<number | null>(null);
  const [below, setBelow] = useState(0); // new messages that arrived while scrolled up
  const [replyTo, setReplyTo] = useState<Message | null>(null);
  const count = view.messages.length;
  const prevCount = useRef(count);

  // Which tool calls will never get a result: a later assistant text exists.
  const lastAnswerSeq = useMemo(() => {
    let s = 0;
    for (const m of view.messages)
      if (m.role === 'assistant' && (m.messageType ?? 'text') === 'text') s = Math.max(s, m.seq ?? 0);
    return s;
  }, [view.messages]);

  const toBottom = useCallback(() => {
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
    stickToBottom.current = true;
    setBelow(0);
  }, []);

  const onScroll = () => {
    const el = listRef.current;
    if (!el) return;
    stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    if (stickToBottom.current) setBelow(0);
    if (el.scrollTop < 60 && view.hasMore && !view.loadingOlder) {
      prevHeight.current = el.scrollHeight;
      props.onLoadOlder();
    }
  };

  // Keep the reading position when older messages are prepended; follow new ones at the bottom,
  // or count them for the "new messages" pill when the reader scrolled up.
  useLayoutEffect(() => {
    const el = listRef.current;
    const added = count - prevCount.current;
    prevCount.current = count;
    if (!el) return;
    if (prevHeight.current !== null && !view.loadingOlder) {
      el.scrollTop += el.scrollHeight - prevHeight.current;
      prevHeight.current = null;
    } else if (stickToBottom.current) {
      el.scrollTop = el.scrollHeight;
    } else if (added > 0) {
      setBelow((b) => b + added);
    }
  }, [count, view.messages, view.streams, view.loadingOlder]);

  useEffect(() => {
    setReplyTo(null);
    toBottom();
  }, [view.conversationId, toBottom]);

  // My latest stored message carries the receipt (delivered / seen by).
  const lastMine = useMemo(() => {
    for (let i = view.messages.length - 1; i >= 0; i--) {
      const m = view.messages[i];
      if (m.role === 'user' && m.createdBy === self && m.seq && !m._id.startsWith('local:') && !m.deletedAt)
        return m;
    }
    return null;
  }, [view.messages, self]);
  const receipt = lastMine ? receiptOf(view, lastMine, self) : undefined;

  const typers = Object.keys(view.typing).filter((p) => p !== self);
  const status = view.agentStatus;
  const renderActions = (m: Message) => (
    <MessageActions message={m} self={self} names={names} actions={actions} onReply={setReplyTo} />
  );
  let lastDay = '';

  return (
    <section className="pane" aria-label={`conversation ${view.conversation?.title ?? view.conversationId}`}>
      <PaneHeader {...props} />
      <div className="messages-wrap">
        <div
          className="messages"
          ref={listRef}
          onScroll={onScroll}
          data-testid="message-list"
          role="log"
          aria-live="polite"
          aria-relevant="additions"
          tabIndex={0}
          aria-label="messages"
        >
          {view.hasMore && (
            <button
              type="button"
              className="load-older"
              onClick={() => {
                prevHeight.current = listRef.current?.scrollHeight ?? null;
                props.onLoadOlder();
              }}
              disabled={view.loadingOlder}
              data-testid="load-older"
            >
              {view.loadingOlder ? 'Loading…' : 'Load older messages'}
            </button>
          )}
          {!view.loaded && <p className="muted center">Loading history…</p>}
          {view.loaded && view.messages.length === 0 && view.streams.length === 0 && (
            <div className="muted center empty-conv" data-testid="empty-conversation">
              <p>No messages yet.</p>
              <p className="small">
                {view.conversation?.agentId
                  ? `Ask ${displayName(view.conversation.agentId, names)} something: try “search AI news” or “calc 12 * 7”.`
                  : 'Say hello, or invite people from Conversation settings.'}
              </p>
            </div>
          )}
          {items.map((it, i) => {
            const when = it.kind === 'message' ? it.message.createdAt : it.messages[0]?.createdAt;
            const day = dayKey(when);
            const sep =
              day && day !== lastDay ? (
                <div className="day-sep" role="separator" data-testid="day-separator" key={`day:${day}`}>
                  <span>{dayLabel(when)}</span>
                </div>
              ) : null;
            if (day) lastDay = day;
            if (it.kind === 'turn')
              return [
                sep,
                <Turn
                  key={it.key}
                  turn={it}
                  self={self}
                  names={names}
                  results={results}
                  lastAnswerSeq={lastAnswerSeq}
                  running={busy && i === items.length - 1}
                  renderActions={renderActions}
                />,
              ];
            const m = it.message;
            const parent = m.parentMessageId ? byId.get(m.parentMessageId) : undefined;
            return [
              sep,
              <div key={it.key} className={`row ${m.role === 'user' && m.createdBy === self ? 'row-mine' : ''}`}>
                <MessageItem
                  message={m}
                  self={self}
                  names={names}
                  results={results}
                  superseded={(m.seq ?? 0) < lastAnswerSeq}
                  quote={parent}
                  receipt={m === lastMine ? receipt : undefined}
                  onRetry={actions.retry}
                />
                {m.role === 'user' && !m._id.startsWith('local:') && renderActions(m)}
              </div>,
            ];
          })}
        </div>
        {below > 0 && (
          <button type="button" className="new-pill" onClick={toBottom} data-testid="new-messages-pill">
            ↓ {below} new message{below === 1 ? '' : 's'}
          </button>
        )}
      </div>

      <div className="live-status" role="status" aria-live="polite" data-testid="live-status">
        {status?.kind === 'thinking' && (
          <span data-testid="agent-status" data-status="thinking">
            <span className="spinner small" aria-hidden="true" /> {displayName(status.agentId ?? 'agent', names)} is
            thinking…
          </span>
        )}
        {status?.kind === 'tool-calling' && (
          <span data-testid="agent-status" data-status="tool-calling">
            <span className="spinner small" aria-hidden="true" /> {displayName(status.agentId ?? 'agent', names)} is
            calling {status.toolName ?? 'a tool'}…
          </span>
        )}
        {(connection === 'reconnecting' || connection === 'connecting') && (
          <span className="offline-note" data-testid="offline-note">
            Connection lost: reconnecting. Messages you send now go out when it is back.
          </span>
        )}
        {typers.length > 0 && (
          <span data-testid="typing-indicator">
            {typers.map((t) => displayName(t, names)).join(', ')} {typers.length === 1 ? 'is' : 'are'} typing…
          </span>
        )}
      </div>

      <Composer
        disabled={connection === 'closed'}
        busy={busy}
        onSend={(text, attachments) => {
          actions.send(text, replyTo?._id ?? null, attachments);
          setReplyTo(null);
          toBottom();
        }}
        onStop={actions.stop}
        onTyping={actions.typing}
        onUpload={(file, progress) => actions.upload(view.conversationId, file, progress)}
        conversationId={view.conversationId}
        replyTo={
          replyTo
            ? {
                who: replyTo.createdBy === self ? 'yourself' : displayName(replyTo.agentId ?? replyTo.createdBy, names),
                text: replyTo.content,
              }
            : null
        }
        onCancelReply={() => setReplyTo(null)}
      />
    </section>
  );
}
