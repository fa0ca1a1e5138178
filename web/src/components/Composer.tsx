/** The message composer: Enter sends, Shift+Enter breaks the line, Esc stops the agent. */
import { useCallback, useEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';

export function Composer({
  disabled,
  busy,
  onSend,
  onStop,
  onTyping,
  conversationId,
  replyTo,
  onCancelReply,
}: {
  disabled: boolean;
  busy: boolean;
  onSend: (content: string) => void;
  onStop: () => void;
  onTyping: (on: boolean) => void;
  conversationId: string;
  replyTo: { who: string; text: string } | null;
  onCancelReply: () => void;
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
    } else if (e.key === 'Escape') {
      if (busy) onStop();
      else if (replyTo) onCancelReply();
    }
  };

  // Esc stops a running turn from anywhere on the page (not only the composer).
  useEffect(() => {
    if (!busy) return;
    const onDocKey = (e: globalThis.KeyboardEvent) => {
      if (e.key === 'Escape' && e.target !== ref.current && !e.defaultPrevented) onStop();
    };
    document.addEventListener('keydown', onDocKey);
    return () => document.removeEventListener('keydown', onDocKey);
  }, [busy, onStop]);

  useEffect(() => {
    if (replyTo) ref.current?.focus();
  }, [replyTo]);

  return (
    <form className="composer" onSubmit={submit} aria-label="send a message">
      {replyTo && (
        <div className="reply-preview" data-testid="reply-preview">
          <span className="muted small">Replying to {replyTo.who}</span>
          <q>{replyTo.text.slice(0, 140)}</q>
          <button type="button" className="icon-button" aria-label="Cancel the reply" onClick={onCancelReply}>
            ✕
          </button>
        </div>
      )}
      <div className="composer-row">
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
            ■ Stop <span className="kbd">Esc</span>
          </button>
        )}
        <button type="submit" disabled={disabled || !text.trim()} data-testid="send-button">
          Send
        </button>
      </div>
      </div>
    </form>
  );
}
