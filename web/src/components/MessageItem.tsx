/** One message, rendered by its messageType (design doc 5.1, flow of 5.2). */
import { useEffect, useId, useMemo, useRef, useState, type ReactNode } from 'react';
import { formatCost, formatMs, prettyJson } from '../format';
import { renderMarkdown } from '../markdown';
import type { Message, ToolResult } from '../protocol';
import type { Receipt, StreamView } from '../store';
import { exactTime, relativeTime } from '../time';
import { Attachments } from './Attachments';
import { Avatar } from './Avatar';
import { ToolCallRow } from './ToolCallRow';

export { formatCost, formatMs };





/** Rendered Markdown; each code block gets a copy button. */
export function Markdown({ text }: { text: string }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const root = ref.current;
    if (!root) return;
    for (const pre of root.querySelectorAll('pre')) {
      if (pre.parentElement?.classList.contains('code-block')) continue;
      const wrap = document.createElement('div');
      wrap.className = 'code-block';
      pre.replaceWith(wrap);
      wrap.appendChild(pre);
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'copy-code';
      btn.textContent = 'Copy';
      btn.setAttribute('aria-label', 'Copy code');
      btn.dataset.testid = 'copy-code';
      btn.addEventListener('click', () => {
        void navigator.clipboard?.writeText(pre.textContent ?? '').then(() => {
          btn.textContent = 'Copied';
          setTimeout(() => (btn.textContent = 'Copy'), 1500);
        });
      });
      wrap.appendChild(btn);
    }
  }, [html]);
  return <div className="md" ref={ref} dangerouslySetInnerHTML={{ __html: html }} />;
}

/** A button that shows/hides a region; keyboard and screen-reader friendly. */
export function Collapsible({
  label,
  defaultOpen = false,
  className,
  children,
  testId,
}: {
  label: ReactNode;
  defaultOpen?: boolean;
  className?: string;
  children: ReactNode;
  testId?: string;
}) {
  const [open, setOpen] = useState(defaultOpen);
  const id = useId();
  return (
    <div className={`collapsible ${className ?? ''}`}>
      <button
        type="button"
        className="collapse-toggle"
        aria-expanded={open}
        aria-controls={id}
        data-testid={testId}
        onClick={() => setOpen((o) => !o)}
      >
        <span className="chevron" aria-hidden="true">
          {open ? '▾' : '▸'}
        </span>
        {label}
      </button>
      <div id={id} className="collapse-body" hidden={!open}>
        {children}
      </div>
    </div>
  );
}

export function Meta({ m }: { m: Message }) {
  const parts: string[] = [];
  if (m.usage)
    parts.push(
      `${m.usage.totalTokens} tokens (${m.usage.promptTokens} in / ${m.usage.completionTokens} out)`,
    );
  if (m.latency != null) parts.push(formatMs(m.latency));
  if (m.cost != null) parts.push(formatCost(m.cost));
  if (m.finishReason && m.finishReason !== 'stop' && m.finishReason !== 'tool_calls')
    parts.push(m.finishReason === 'aborted' ? 'stopped' : m.finishReason);
  if (!parts.length) return null;
  return (
    <div className="meta" data-testid="message-meta">
      {parts.join(' · ')}
    </div>
  );
}


export interface MessageItemProps {
  message: Message;
  self: string | null;
  results: Map<string, ToolResult>;
  /** True when a later agent answer exists (a tool call without result will never get one). */
  superseded: boolean;
  /** Inside an agent turn: no header of its own, no usage line (the turn has them). */
  compact?: boolean;
  /** Stored tool_result messages by toolCallId, shown inside their call. */
  resultMessages?: Map<string, Message>;
  names?: Record<string, string>;
  /** The message this one replies to (parentMessageId), shown as a quote. */
  quote?: Message;
  /** Delivered / seen by (docs/protocol.md 3.6): given for my latest message only. */
  receipt?: Receipt;
  onRetry?: (m: Message) => void;
}

export function MessageItem({
  message: m,
  self,
  results,
  superseded,
  compact = false,
  resultMessages,
  names = {},
  quote,
  receipt,
  onRetry,
}: MessageItemProps) {
  const type = m.messageType ?? 'text';
  const mine = m.role === 'user' && m.createdBy != null && m.createdBy === self;
  const author = m.role === 'user' ? m.createdBy : (m.agentId ?? m.createdBy);
  const who =
    m.role === 'user'
      ? mine
        ? 'You'
        : (author ? (names[author] ?? author) : 'user')
      : m.role === 'tool'
        ? (m.name ?? 'tool')
        : m.role === 'system'
          ? 'Parley'
          : author
            ? (names[author] ?? author)
            : 'agent';
  const common = {
    'data-testid': 'message',
    'data-message-type': type,
    'data-role': m.role,
    'data-message-id': m._id,
    'data-seq': m.seq ?? undefined,
  };
  const header = compact ? null : (
    <div className="msg-head">
      <span className="who">
        <Avatar id={author ?? who} name={mine && self ? (names[self] ?? self) : who} agent={m.role !== 'user'} />
        {who}
      </span>
      <time dateTime={m.createdAt ?? undefined} title={exactTime(m.createdAt)}>
        {relativeTime(m.createdAt)}
      </time>
      {m.messageStatus === 'sending' && <span className="badge muted">sending…</span>}
      {m.messageStatus === 'failed' && (
        <>
          <span className="badge err">not sent</span>
          {onRetry && (
            <button type="button" className="link" onClick={() => onRetry(m)} data-testid="retry">
              Retry
            </button>
          )}
        </>
      )}
      {m.editedAt && <span className="badge muted">edited</span>}
      {mine && receipt && !m.deletedAt && <ReceiptBadge receipt={receipt} names={names} />}
    </div>
  );

  if (m.deletedAt)
    return (
      <article {...common} className="msg msg-deleted" aria-label="deleted message">
        {header}
        <p className="muted">This message was deleted.</p>
      </article>
    );

  switch (type) {
    case 'thinking': {
      const t = m.thinking;
      const label = (
        <span>
          Thinking{t?.duration ? ` · ${formatMs(t.duration)}` : ''}
          {t && t.visible === false ? ' (hidden)' : ''}
        </span>
      );
      return (
        <article {...common} className="msg msg-thinking" aria-label="agent thinking">
          {header}
          {t && t.visible !== false ? (
            <Collapsible label={label} testId="thinking-toggle">
              <div className="thinking-text">{t.content || m.content}</div>
            </Collapsible>
          ) : (
            <div className="thinking-hidden">{label}</div>
          )}
        </article>
      );
    }
    case 'tool_call':
      return (
        <article {...common} className="msg msg-tool-call" aria-label="tool call">
          {header}
          {m.content && <div className="tool-intro">{m.content}</div>}
          <ul className="tool-calls">
            {(m.toolCalls ?? []).map((c) => (
              <ToolCallRow key={c.id} call={c} result={results.get(c.id)} abandoned={superseded}>
                {resultMessages?.get(c.id) && (
                  <MessageItem
                    message={resultMessages.get(c.id)!}
                    self={self}
                    results={results}
                    superseded={false}
                    compact
                  />
                )}
              </ToolCallRow>
            ))}
          </ul>
          {!compact && <Meta m={m} />}
        </article>
      );
    case 'tool_result': {
      const rs = m.toolResults ?? [];
      const ok = rs.length > 0 && rs.every((r) => r.success);
      const name = m.name ?? rs[0]?.toolName ?? 'tool';
      const time = rs.reduce((a, r) => a + (r.executionTime ?? 0), 0);
      return (
        <article
          {...common}
          className={`msg msg-tool-result ${ok ? 'ok' : 'failed'}`}
          aria-label="tool result"
        >
          <Collapsible
            testId="tool-result-toggle"
            label={
              <span>
                <span aria-hidden="true" className={ok ? 'ok-mark' : 'err-mark'}>
                  {ok ? '✓' : '✗'}
                </span>{' '}
                Tool result: {name}
                {time ? ` · ${formatMs(time)}` : ''}
                {m.content ? <span className="summary"> — {m.content}</span> : null}
              </span>
            }
          >
            {rs.map((r) => (
              <div key={r.toolCallId} className="tool-result-body" data-testid="tool-result-body">
                {!r.success && r.error && <div className="error-text">{r.error}</div>}
                <pre>{prettyJson(r.result)}</pre>
              </div>
            ))}
          </Collapsible>
        </article>
      );
    }
    case 'error':
      return (
        <article {...common} className="msg msg-error" role="alert" aria-label="error">
          {header}
          <div>
            <span aria-hidden="true">⚠ </span>
            {m.error || m.content || 'error'}
          </div>
          {m.error && m.content && m.content !== m.error && (
            <div className="muted">{m.content}</div>
          )}
        </article>
      );
    case 'system':
      return (
        <article {...common} className="msg msg-system" aria-label="system message">
          {m.content}
        </article>
      );
    default:
      return (
        <article
          {...common}
          className={`msg msg-text ${mine ? 'mine' : ''} role-${m.role}`}
          aria-label={`message from ${who}`}
        >
          {header}
          {quote && (
            <blockquote className="quote" data-testid="reply-quote">
              <span className="muted small">
                ↩ {quote.role === 'user' ? (quote.createdBy === self ? 'You' : (names[quote.createdBy ?? ''] ?? quote.createdBy)) : (names[quote.agentId ?? ''] ?? quote.agentId ?? 'agent')}:
              </span>{' '}
              {quote.deletedAt ? <em>deleted message</em> : quote.content.slice(0, 160)}
            </blockquote>
          )}
          {m.content ? (
            <Markdown text={m.content} />
          ) : (
            <p className="muted stopped-note">
              {m.finishReason === 'aborted' ? 'Stopped before answering.' : '(empty)'}
            </p>
          )}
          <Attachments list={m.attachments} />
          {!compact && <Meta m={m} />}
        </article>
      );
  }
}

export function StreamBubble({ stream, compact = false }: { stream: StreamView; compact?: boolean }) {
  return (
    <article
      className="msg msg-text role-assistant streaming"
      data-testid="stream-bubble"
      data-stream-id={stream.streamId}
      data-ended={stream.ended ? 'true' : 'false'}
      aria-label="agent answer, streaming"
      aria-busy={!stream.ended}
    >
      {!compact && (
        <div className="msg-head">
          <span className="who">
            <Avatar id={stream.agentId ?? 'agent'} name={stream.agentId ?? 'agent'} agent />
            {stream.agentId ?? 'agent'}
          </span>
          <span className="badge muted">{stream.ended ? 'finishing…' : 'streaming…'}</span>
        </div>
      )}
      <div className="md stream-text" data-testid="stream-text">
        {stream.text}
        {!stream.ended && <span className="caret" aria-hidden="true" />}
      </div>
    </article>
  );
}

/** "Sent", "Delivered" or "Seen by Bob, Carol and 2 more" under my latest message. */
function ReceiptBadge({ receipt, names }: { receipt: Receipt; names: Record<string, string> }) {
  const seen = receipt.seenBy.map((w) => names[w] ?? w);
  const state = seen.length ? 'seen' : receipt.delivered ? 'delivered' : 'sent';
  const shown = seen.length > 3 ? `${seen.slice(0, 3).join(', ')} and ${seen.length - 3} more` : seen.join(', ');
  const text = seen.length ? `Seen by ${shown}` : receipt.delivered ? 'Delivered' : 'Sent';
  return (
    <span className={`badge muted receipt receipt-${state}`} data-testid="receipt" data-state={state} title={seen.length ? `Seen by ${seen.join(', ')}` : text}>
      {state === 'sent' ? '✓' : '✓✓'} {text}
    </span>
  );
}
