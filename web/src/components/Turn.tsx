/** One agent turn as one block: thinking, tool calls with their results, the answer, a quiet footer. */
import { useMemo } from 'react';
import type { Message, ToolResult } from '../protocol';
import { exactTime, relativeTime } from '../time';
import { finalOf, type Item } from '../turns';
import { Avatar } from './Avatar';
import { MessageItem, Meta, StreamBubble } from './MessageItem';

export function Turn({
  turn,
  self,
  names,
  results,
  lastAnswerSeq,
  running,
  renderActions,
}: {
  turn: Extract<Item, { kind: 'turn' }>;
  self: string | null;
  names: Record<string, string>;
  results: Map<string, ToolResult>;
  lastAnswerSeq: number;
  running: boolean;
  renderActions?: (m: Message) => React.ReactNode;
}) {
  const agent = turn.agentId ?? turn.messages[0]?.createdBy ?? 'agent';
  const name = names[agent] ?? agent;
  // Each tool_result goes inside the call it answers (when that call is in this turn).
  const { resultMessages, paired } = useMemo(() => {
    const calls = new Set(turn.messages.flatMap((m) => (m.toolCalls ?? []).map((c) => c.id)));
    const byCall = new Map<string, Message>();
    const ids = new Set<string>();
    for (const m of turn.messages)
      if ((m.messageType ?? 'text') === 'tool_result') {
        const id = m.toolResults?.[0]?.toolCallId;
        if (id && calls.has(id) && !byCall.has(id)) {
          byCall.set(id, m);
          ids.add(m._id);
        }
      }
    return { resultMessages: byCall, paired: ids };
  }, [turn.messages]);
  const final = finalOf(turn.messages);
  const first = turn.messages[0];
  const live = running || turn.streams.some((s) => !s.ended);
  return (
    <section
      className={`turn ${live ? 'turn-live' : ''}`}
      data-testid="turn"
      data-parent-message-id={turn.parentMessageId ?? ''}
      aria-label={`answer from ${name}`}
      aria-busy={live}
    >
      <div className="msg-head turn-head">
        <span className="who">
          <Avatar id={agent} name={name} agent />
          {name}
        </span>
        {first?.createdAt && (
          <time dateTime={first.createdAt} title={exactTime(first.createdAt)}>
            {relativeTime(first.createdAt)}
          </time>
        )}
        {live && (
          <span className="badge muted" data-testid="turn-running">
            <span className="spinner small" aria-hidden="true" /> working…
          </span>
        )}
      </div>
      <div className="turn-body">
        {turn.messages
          .filter((m) => !paired.has(m._id))
          .map((m) => (
            <div key={m._id} className="turn-step">
              <MessageItem
                message={m}
                self={self}
                names={names}
                results={results}
                resultMessages={resultMessages}
                superseded={(m.seq ?? 0) < lastAnswerSeq}
                compact
              />
              {m === final && renderActions?.(m)}
            </div>
          ))}
        {turn.streams.map((s) => (
          <StreamBubble key={s.streamId} stream={s} compact />
        ))}
      </div>
      {final && !live && (
        <footer className="turn-foot">
          <Meta m={final} />
        </footer>
      )}
    </section>
  );
}
