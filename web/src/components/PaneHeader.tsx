/** The open conversation's header: title, agent, people (names and presence), totals and settings. */
import { useState } from 'react';
import { displayName } from '../names';
import type { AgentInfo, ConnectionState } from '../protocol';
import { totals, type ConvView } from '../store';
import type { Actions } from '../useActions';
import { Icon } from './Icon';
import { InviteInput } from './InviteInput';
import { formatCost } from './MessageItem';

export interface PaneHeaderProps {
  view: ConvView;
  self: string | null;
  names: Record<string, string>;
  agents: AgentInfo[];
  presence: Record<string, boolean>;
  connection: ConnectionState;
  actions: Actions;
  onBack: () => void;
  onDeleted: () => void;
}

export function PaneHeader({ view, self, names, agents, presence, connection, actions, onBack, onDeleted }: PaneHeaderProps) {
  const c = view.conversation;
  const cid = view.conversationId;
  const t = totals(view);
  const participants = (c?.participants ?? []).filter((p) => !p.leftAt);
  const agentName = c?.agentId ? displayName(c.agentId, names) : null;
  return (
    <>
      <header className="pane-head">
        <button type="button" className="back icon-button" onClick={onBack} aria-label="Back to conversations">
          <Icon name="back" size={20} />
        </button>
        <div className="pane-title">
          <h2 data-testid="conversation-title">{c?.title ?? '…'}</h2>
          <div className="muted small">
            <span data-testid="conversation-id" className="conv-id">
              {cid}
            </span>
            {agentName ? ` · with ${agentName}` : ''}
            {c?.status === 'archived' ? ' · archived' : ''}
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
              <li
                key={id}
                data-testid="participant"
                data-participant-id={id}
                data-online={online ? 'true' : 'false'}
                title={id}
              >
                <span className={`dot ${online ? 'on' : online === false ? 'off' : 'unknown'}`} aria-hidden="true" />
                {displayName(id, names)}
                {id === self ? ' (you)' : ''}
                {p.agentId ? <span className="muted"> · agent</span> : null}
                <span className="sr-only-text">{online ? ' online' : online === false ? ' offline' : ' status unknown'}</span>
              </li>
            );
          })}
        </ul>
      )}
      <Settings
        key={cid}
        cid={cid}
        title={c?.title ?? ''}
        agentId={c?.agentId ?? ''}
        archived={c?.status === 'archived'}
        mayDelete={c?.createdBy === self}
        agents={agents}
        actions={actions}
        onDeleted={onDeleted}
      />
    </>
  );
}

function Settings(props: {
  cid: string;
  title: string;
  agentId: string;
  archived: boolean;
  mayDelete: boolean;
  agents: AgentInfo[];
  actions: Actions;
  onDeleted: () => void;
}) {
  const { cid, actions } = props;
  const [title, setTitle] = useState(props.title);
  const [invite, setInvite] = useState<string[]>([]);
  const [confirm, setConfirm] = useState(false);
  const known = props.agents.some((a) => a.id === props.agentId);
  return (
    <details className="conv-settings">
      <summary>Conversation settings</summary>
      <div className="settings-grid">
        <form
          aria-label="rename"
          onSubmit={(e) => {
            e.preventDefault();
            if (title.trim()) void actions.update(cid, { title: title.trim() }, 'Cannot rename');
          }}
        >
          <label htmlFor="rename-input">Title</label>
          <div className="row">
            <input id="rename-input" value={title} maxLength={200} onChange={(e) => setTitle(e.target.value)} data-testid="rename-input" />
            <button type="submit" data-testid="rename">
              Rename
            </button>
          </div>
        </form>
        <form
          aria-label="invite people"
          onSubmit={(e) => {
            e.preventDefault();
            const pending = String(new FormData(e.currentTarget).get('invite-pending') ?? '')
              .split(/[\s,]+/)
              .filter(Boolean);
            const ids = [...new Set([...invite, ...pending])];
            if (ids.length) void actions.update(cid, { addParticipants: ids }, 'Cannot invite');
            setInvite([]);
          }}
        >
          <InviteInput value={invite} onChange={setInvite} id="invite-more" label="Invite people (user ids)" />
          <button type="submit" data-testid="invite">
            Invite
          </button>
        </form>
        <form
          aria-label="switch agent"
          onSubmit={(e) => {
            e.preventDefault();
            const v = new FormData(e.currentTarget).get('agentId');
            if (typeof v === 'string') void actions.update(cid, { agentId: v || null }, 'Cannot switch agent');
          }}
        >
          <label htmlFor="switch-agent">Agent answering here</label>
          <div className="row">
            <select id="switch-agent" name="agentId" defaultValue={props.agentId} data-testid="switch-agent-input">
              {!known && props.agentId && <option value={props.agentId}>{props.agentId}</option>}
              {props.agents.map((a) => (
                <option key={a.id} value={a.id}>
                  {a.name}
                </option>
              ))}
              <option value="">No agent</option>
            </select>
            <button type="submit" data-testid="switch-agent">
              Switch agent
            </button>
          </div>
        </form>
        <div className="row danger-row">
          <button
            type="button"
            data-testid="archive"
            onClick={() => void actions.update(cid, { status: props.archived ? 'active' : 'archived' }, 'Cannot archive')}
          >
            {props.archived ? 'Unarchive' : 'Archive'}
          </button>
          {props.mayDelete &&
            (confirm ? (
              <>
                <button
                  type="button"
                  className="danger"
                  data-testid="delete-confirm"
                  onClick={() => void actions.deleteConversation(cid).then((ok) => ok && props.onDeleted())}
                >
                  Delete for everyone
                </button>
                <button type="button" onClick={() => setConfirm(false)}>
                  Keep it
                </button>
              </>
            ) : (
              <button type="button" className="danger" data-testid="delete-conversation" onClick={() => setConfirm(true)}>
                Delete…
              </button>
            ))}
        </div>
      </div>
    </details>
  );
}
