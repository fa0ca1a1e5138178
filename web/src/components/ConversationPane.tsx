/** The open conversation: header with participants and totals, history, live status, composer. */
import {
  useCallback,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
  type FormEvent,
  type KeyboardEvent,
} from 'react';
import type { ConnectionState, Message } from '../protocol';
import { agentBusy, resultsByCallId, totals, type ConvView } from '../store';
import { formatCost, MessageItem, StreamBubble } from './MessageItem';

export interface PaneProps {
  view: ConvView;
  self: string | null;
  presence: Record<string, boolean>;
  connection: ConnectionState;
  onSend: (content: string) => void;
  onStop: () => void;
  onTyping: (on: boolean) => void;
  onLoadOlder: () => void;
  onBack: () => void;
  onSwitchAgent: (agentId: string) => void;
}

export function ConversationPane(props: PaneProps) {
  const { view, self, presence, connection } = props;
  const c = view.conversation;
  const results = useMemo(() => resultsByCallId(view.messages), [view.messages]);
  const t = totals(view);
  const busy = agentBusy(view);
  const listRef = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);
  const prevHeight = useRef<number | null>(null);

  // Which tool calls will never get a result: a later assistant text exists.
  const lastAnswerSeq = useMemo(() => {
    let s = 0;
    for (const m of view.messages)
      if (m.role === 'assistant' && (m.messageType ?? 'text') === 'text') s = Math.max(s, m.seq ?? 0);
    return s;
  }, [view.messages]);

  const onScroll = () => {
    const el = listRef.current;
    if (!el) return;
    stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    if (el.scrollTop < 60 && view.hasMore && !view.loadingOlder) {
      prevHeight.current = el.scrollHeight;
      props.onLoadOlder();
    }
  };

  // Keep the reading position when older messages are prepended; follow new ones at the bottom.
  useLayoutEffect(() => {
    const el = listRef.current;
    if (!el) return;
    if (prevHeight.current !== null && !view.loadingOlder) {
      el.scrollTop += el.scrollHeight - prevHeight.current;
      prevHeight.current = null;
    } else if (stickToBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
  }, [view.messages, view.streams, view.loadingOlder]);

  useEffect(() => {
    stickToBottom.current = true;
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [view.conversationId]);

  const typers = Object.keys(view.typing).filter((p) => p !== self);
  const status = view.agentStatus;

  const participants = (c?.participants ?? []).filter((p) => !p.leftAt);

  return (
    <section className="pane" aria-label={`conversation ${c?.title ?? view.conversationId}`}>
      <header className="pane-head">
        <button type="button" className="back" onClick={props.onBack} aria-label="Back to conversations">
          ←
        </button>
        <div className="pane-title">
          <h2 data-testid="conversation-title">{c?.title ?? view.conversationId}</h2>
          <div className="muted small">
            <span data-testid="conversation-id">{view.conversationId}</span>
            {c?.agentId ? ` · agent ${c.agentId}` : ''}
          </div>
        </div>
        <dl className="totals" data-testid="conversation-totals" aria-label="conversation totals">
          <div>
            <dt>messages</dt>
            <dd data-testid="total-messages">{t.messages}</dd>
          </div>
          <div>
            <dt>tokens</dt>
            <dd data-testid="total-tokens">{t.tokens}</dd>
          </div>
          <div>
            <dt>cost</dt>
            <dd data-testid="total-cost">{formatCost(t.cost) || '$0'}</dd>
          </div>
        </dl>
      </header>
      {participants.length > 0 && (
        <ul className="participants" aria-label="participants" data-testid="participants">
          {participants.map((p) => {
            const id = p.userId ?? p.agentId ?? '?';
            const online = id === self ? connection === 'open' : presence[id];
            return (
              <li key={id} data-testid="participant" data-online={online ? 'true' : 'false'}>
                <span
                  className={`dot ${online ? 'on' : online === false ? 'off' : 'unknown'}`}
                  aria-hidden="true"
                />
                
                {id === self ? `${id} (you)` : id}
                <span className="sr-only-text">
                  {online ? ' online' : online === false ? ' offline' : ' status unknown'}
                </span>
              </li>
            );
          })}
        </ul>
      )}

      <details className="conv-settings">
        <summary>Conversation settings</summary>
        <form
          aria-label="switch agent"
          onSubmit={(e) => {
            e.preventDefault();
            const v = new FormData(e.currentTarget).get('agentId');
            if (typeof v === 'string' && v.trim()) props.onSwitchAgent(v.trim());
          }}
        >
          <label htmlFor="switch-agent">Agent answering in this conversation</label>
          <div className="row">
            <input
              id="switch-agent"
              name="agentId"
              defaultValue={c?.agentId ?? ''}
              key={c?.agentId ?? ''}
              data-testid="switch-agent-input"
            />
            <button type="submit" data-testid="switch-agent">
              Switch agent
            </button>
          </div>
        </form>
      </details>

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
          <p className="muted center">No messages yet. Say hello!</p>
        )}
        {view.messages.map((m: Message) => (
          <MessageItem
            key={m._id}
            message={m}
            self={self}
            results={results}
            superseded={(m.seq ?? 0) < lastAnswerSeq}
          />
        ))}
        {view.streams.map((s) => (
          <StreamBubble key={s.streamId} stream={s} />
        ))}
      </div>

      <div className="live-status" role="status" aria-live="polite" data-testid="live-status">
        {status?.kind === 'thinking' && (
          <span data-testid="agent-status" data-status="thinking">
            <span className="spinner small" aria-hidden="true" /> {status.agentId ?? 'agent'} is
            thinking…
          </span>
        )}
        {status?.kind === 'tool-calling' && (
          <span data-testid="agent-status" data-status="tool-calling">
            <span className="spinner small" aria-hidden="true" /> {status.agentId ?? 'agent'} is
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
            {typers.join(', ')} {typers.length === 1 ? 'is' : 'are'} typing…
          </span>
        )}
      </div>

      <Composer
        disabled={connection === 'closed'}
        busy={busy}
        onSend={props.onSend}
        onStop={props.onStop}
        onTyping={props.onTyping}
        conversationId={view.conversationId}
      />
    </section>
  );
}

function Composer({
  disabled,
  busy,
  onSend,
  onStop,
  onTyping,
  conversationId,
}: {
  disabled: boolean;
  busy: boolean;
  onSend: (content: string) => void;
  onStop: () => void;
  onTyping: (on: boolean) => void;
  conversationId: string;
}) {
  const [text, setText] = useState('');
  const lastTyping = useRef(0);
  const idleTimer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const ref = useRef<HTMLTextAreaElement>(null);

  const stopTyping = useCallback(() => {
    if (idleTimer.current) clearTimeout(idleTimer.current);
    idleTimer.current = null;
    if (lastTyping.current) {
      lastTyping.current = 0;
      onTyping(false);
    }
  }, [onTyping]);

  useEffect(() => {
    setText('');
    ref.current?.focus();
    return () => stopTyping();
  }, [conversationId, stopTyping]);

  const change = (v: string) => {
    setText(v);
    const now = Date.now();
    if (v && now - lastTyping.current > 3000) {
      lastTyping.current = now;
      onTyping(true);
    }
    if (idleTimer.current) clearTimeout(idleTimer.current);
    idleTimer.current = setTimeout(stopTyping, 4000);
  };

  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    const v = text.trim();
    if (!v || disabled) return;
    stopTyping();
    onSend(v);
    setText('');
  };

  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      submit();
    }
  };

  return (
    <form className="composer" onSubmit={submit} aria-label="send a message">
      <label htmlFor="composer-input" className="sr-only">
        Message
      </label>
      <textarea
        id="composer-input"
        ref={ref}
        rows={2}
        value={text}
        placeholder="Message… (Enter to send, Shift+Enter for a new line)"
        onChange={(e) => change(e.target.value)}
        onKeyDown={onKey}
        onBlur={stopTyping}
        data-testid="composer-input"
      />
      <div className="composer-buttons">
        {busy && (
          <button
            type="button"
            className="stop"
            onClick={onStop}
            data-testid="stop-button"
            aria-label="Stop the agent"
          >
            ■ Stop
          </button>
        )}
        <button type="submit" disabled={disabled || !text.trim()} data-testid="send-button">
          Send
        </button>
      </div>
    </form>
  );
}
