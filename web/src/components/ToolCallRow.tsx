/** One tool call: name, arguments, and its status (running, done in N ms, failed, no result). */
import type { ReactNode } from 'react';
import { formatMs, prettyJson } from '../format';
import type { ToolCall, ToolResult } from '../protocol';

export function ToolCallRow({
  call,
  result,
  abandoned,
  children,
}: {
  call: ToolCall;
  result: ToolResult | undefined;
  abandoned: boolean;
  /** The stored tool_result message, rendered inside its call. */
  children?: ReactNode;
}) {
  const state = result ? (result.success ? 'success' : 'error') : abandoned ? 'none' : 'running';
  return (
    <li className={`tool-call tool-${state}`} data-testid="tool-call" data-tool-state={state}>
      <div className="tool-head">
        <span className="tool-icon" aria-hidden="true">
          ⚙
        </span>
        <span className="tool-name">{call.function.name}</span>
        {state === 'running' && (
          <span className="spinner-wrap" role="status" aria-live="polite">
            <span className="spinner" aria-hidden="true" data-testid="tool-spinner" />
            <span className="sr-only-text">running…</span>
          </span>
        )}
        {state === 'success' && (
          <span className="badge ok" role="status">
            ✓ done{result?.executionTime != null ? ` in ${formatMs(result.executionTime)}` : ''}
          </span>
        )}
        {state === 'error' && (
          <span className="badge err" role="status">
            ✗ failed{result?.error ? `: ${result.error}` : ''}
          </span>
        )}
        {state === 'none' && <span className="badge muted">no result</span>}
      </div>
      <pre className="tool-args" aria-label={`arguments of ${call.function.name}`}>
        {prettyJson(call.function.arguments)}
      </pre>
      {children}
    </li>
  );
}
