/** Under a message: reaction chips, and copy / reply / react / edit / delete (own messages). */
import { useState } from 'react';
import { displayName } from '../names';
import type { Message } from '../protocol';
import type { Actions } from '../useActions';
import { Icon } from './Icon';

export const EMOJI = ['👍', '❤️', '😂', '🎉', '🤔', '👀'];

export function MessageActions({
  message: m,
  self,
  names,
  actions,
  onReply,
}: {
  message: Message;
  self: string | null;
  names: Record<string, string>;
  actions: Actions;
  onReply: (m: Message) => void;
}) {
  const [picker, setPicker] = useState(false);
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(m.content);
  const [copied, setCopied] = useState(false);
  const [confirm, setConfirm] = useState(false);
  if (m.deletedAt) return null;
  const mine = m.role === 'user' && m.createdBy === self;
  const reactions = Object.entries(m.reactions ?? {}).filter(([, who]) => who.length > 0);
  const toggle = (emoji: string) => {
    const had = (m.reactions?.[emoji] ?? []).includes(self ?? '');
    void actions.react(m, emoji, had);
    setPicker(false);
  };
  const copy = () => {
    void navigator.clipboard?.writeText(m.content).then(
      () => {
        setCopied(true);
        setTimeout(() => setCopied(false), 1500);
      },
      () => undefined,
    );
  };

  return (
    <div className={`msg-actions-wrap ${mine ? 'mine' : ''}`} data-testid="message-actions" data-for={m._id}>
      {editing && (
        <form
          className="edit-form"
          aria-label="edit message"
          onSubmit={(e) => {
            e.preventDefault();
            if (draft.trim() && draft !== m.content) void actions.edit(m, draft.trim());
            setEditing(false);
          }}
        >
          <label htmlFor={`edit-${m._id}`} className="sr-only">
            Edit message
          </label>
          <textarea
            id={`edit-${m._id}`}
            value={draft}
            autoFocus
            rows={2}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === 'Escape') setEditing(false);
              if (e.key === 'Enter' && !e.shiftKey) {
                e.preventDefault();
                e.currentTarget.form?.requestSubmit();
              }
            }}
            data-testid="edit-input"
          />
          <div className="row">
            <button type="submit" data-testid="edit-save">
              Save
            </button>
            <button type="button" onClick={() => setEditing(false)}>
              Cancel
            </button>
          </div>
        </form>
      )}
      {reactions.length > 0 && (
        <ul className="reactions" aria-label="reactions">
          {reactions.map(([emoji, who]) => {
            const mineToo = who.includes(self ?? '');
            const people = who.map((w) => (w === self ? 'you' : displayName(w, names))).join(', ');
            return (
              <li key={emoji}>
                <button
                  type="button"
                  className={`reaction ${mineToo ? 'mine' : ''}`}
                  aria-pressed={mineToo}
                  aria-label={`${emoji} ${who.length}: ${people}`}
                  title={people}
                  onClick={() => toggle(emoji)}
                  data-testid="reaction"
                  data-emoji={emoji}
                  data-count={who.length}
                >
                  {emoji} <span className="count">{who.length}</span>
                </button>
              </li>
            );
          })}
        </ul>
      )}
      <div className="msg-actions" role="toolbar" aria-label="message actions">
        <button type="button" className="act" onClick={copy} aria-label="Copy message" data-testid="copy-message">
          <Icon name={copied ? 'check' : 'copy'} />
        </button>
        <button type="button" className="act" onClick={() => onReply(m)} aria-label="Reply" data-testid="reply">
          <Icon name="reply" />
        </button>
        <button
          type="button"
          className="act"
          aria-label="Add a reaction"
          aria-expanded={picker}
          onClick={() => setPicker((p) => !p)}
          data-testid="react"
        >
          <Icon name="smile" />
        </button>
        {mine && (
          <>
            <button
              type="button"
              className="act"
              aria-label="Edit message"
              onClick={() => {
                setDraft(m.content);
                setEditing(true);
              }}
              data-testid="edit"
            >
              <Icon name="edit" />
            </button>
            {confirm ? (
              <button type="button" className="act danger" onClick={() => void actions.remove(m)} data-testid="delete-confirm-message">
                Delete?
              </button>
            ) : (
              <button type="button" className="act" aria-label="Delete message" onClick={() => setConfirm(true)} data-testid="delete">
                <Icon name="trash" />
              </button>
            )}
          </>
        )}
        {picker && (
          <span className="picker" role="group" aria-label="pick a reaction">
            {EMOJI.map((e) => (
              <button
                type="button"
                key={e}
                className="act"
                aria-label={`React ${e}`}
                onClick={() => toggle(e)}
                data-testid="pick-emoji"
                data-emoji={e}
              >
                {e}
              </button>
            ))}
          </span>
        )}
      </div>
    </div>
  );
}
