/** "New chat": pick an agent from those the system serves, a title, and people to invite. */
import { useEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import type { AgentInfo } from '../protocol';
import type { NewChat } from '../useActions';
import { Avatar } from './Avatar';
import { InviteInput } from './InviteInput';

export function NewChatDialog({
  agents,
  presence,
  onClose,
  onCreate,
}: {
  agents: AgentInfo[];
  presence: Record<string, boolean>;
  onClose: () => void;
  onCreate: (n: NewChat) => Promise<void>;
}) {
  const [agentId, setAgentId] = useState<string>(agents[0]?.id ?? '');
  const [title, setTitle] = useState('');
  const [invite, setInvite] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const first = useRef<HTMLInputElement>(null);
  useEffect(() => first.current?.focus(), []);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    // An id still being typed counts too.
    const pending = String(new FormData(e.currentTarget as HTMLFormElement).get('invite-pending') ?? '')
      .split(/[\s,]+/)
      .filter(Boolean);
    try {
      await onCreate({ title: title.trim(), agentId: agentId || null, invite: [...new Set([...invite, ...pending])] });
    } finally {
      setBusy(false);
    }
  };
  const onKey = (e: KeyboardEvent) => {
    if (e.key === 'Escape') onClose();
  };

  return (
    <div className="overlay" onKeyDown={onKey} onClick={(e) => e.target === e.currentTarget && onClose()}>
      <form
        className="dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby="new-chat-title"
        onSubmit={submit}
        data-testid="new-chat-dialog"
      >
        <h2 id="new-chat-title">New chat</h2>
        <fieldset className="agent-picker">
          <legend>Who answers</legend>
          {[...agents, { id: '', name: 'No agent', description: 'Only people talk here' } as AgentInfo].map((a, i) => {
            const online = a.id ? (presence[a.id] ?? a.online) : undefined;
            return (
              <label key={a.id || 'none'} className={`agent-option ${agentId === a.id ? 'chosen' : ''}`}>
                <input
                  ref={i === 0 ? first : undefined}
                  type="radio"
                  name="agent"
                  value={a.id}
                  checked={agentId === a.id}
                  onChange={() => setAgentId(a.id)}
                  data-testid={`agent-option-${a.id || 'none'}`}
                />
                {a.id ? <Avatar id={a.id} name={a.name} agent /> : <span className="avatar avatar-none" aria-hidden="true">–</span>}
                <span className="agent-text">
                  <span className="agent-name">
                    {a.name}
                    {a.id && (
                      <span
                        className={`dot ${online ? 'on' : online === false ? 'off' : 'unknown'}`}
                        title={online ? 'online' : online === false ? 'offline' : 'status unknown'}
                      />
                    )}
                    {a.id && <span className="sr-only-text">{online ? ' online' : online === false ? ' offline' : ''}</span>}
                  </span>
                  {a.description && <span className="muted small">{a.description}</span>}
                </span>
              </label>
            );
          })}
        </fieldset>
        <label htmlFor="new-title">Title (optional)</label>
        <input
          id="new-title"
          value={title}
          onChange={(e) => setTitle(e.target.value)}
          placeholder="New chat"
          maxLength={200}
          data-testid="new-title"
        />
        <InviteInput value={invite} onChange={setInvite} />
        <div className="dialog-buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" disabled={busy} data-testid="create-conversation">
            {busy ? 'Creating…' : 'Start chat'}
          </button>
        </div>
      </form>
    </div>
  );
}
