/** People to invite, by user id: each becomes a removable chip. */
import { useState, type KeyboardEvent } from 'react';

const ID = /^[A-Za-z0-9_.@:-]{1,128}$/;

export function InviteInput({
  value,
  onChange,
  label = 'Invite people (user ids)',
  id = 'new-invite',
}: {
  value: string[];
  onChange: (v: string[]) => void;
  label?: string;
  id?: string;
}) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const add = () => {
    const ids = text.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
    const bad = ids.find((x) => !ID.test(x));
    if (bad) {
      setError(`“${bad}” is not a user id`);
      return;
    }
    setError(null);
    onChange([...new Set([...value, ...ids])]);
    setText('');
  };
  const onKey = (e: KeyboardEvent<HTMLInputElement>) => {
    if ((e.key === 'Enter' || e.key === ',') && text.trim()) {
      e.preventDefault();
      add();
    } else if (e.key === 'Backspace' && !text && value.length) onChange(value.slice(0, -1));
  };
  return (
    <div className="invite">
      <label htmlFor={id}>{label}</label>
      <div className="chips-input">
        {value.map((v) => (
          <span className="chip" key={v} data-testid="invite-chip">
            {v}
            <button type="button" className="chip-x" aria-label={`Remove ${v}`} onClick={() => onChange(value.filter((x) => x !== v))}>
              ×
            </button>
          </span>
        ))}
        <input
          id={id}
          name="invite-pending"
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={onKey}
          onBlur={() => text.trim() && add()}
          placeholder={value.length ? '' : 'user-2'}
          data-testid={id}
        />
      </div>
      {error && (
        <p className="error-text small" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}
