/** Session internals for developers (behind the Settings toggle). */
import type { ParleyClient } from '../protocol';

export function DevPanel({ client, log, openId }: { client: ParleyClient | null; log: string[]; openId: string | null }) {
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
            <dt>conversation</dt>
            <dd data-testid="dev-conversation">{openId}</dd>
            <dt>lastSeq</dt>
            <dd data-testid="dev-last-seq">{client.lastSeq(openId)}</dd>
          </>
        )}
        <dt>watching</dt>
        <dd>{client.joinedConversations().length} conversations</dd>
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
