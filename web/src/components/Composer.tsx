/** The message composer: Enter sends, Shift+Enter breaks the line, Esc stops the agent.
 * Files: paste, drop or pick; each uploads at once (progress, failed + retry), the message
 * goes out with the uploaded ones once none is still uploading. */
import { useCallback, useEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import type { Attachment } from '../protocol';
import { formatSize } from './Attachments';

export type Uploader = (
  file: File,
  onProgress: (sent: number, total: number) => void,
) => { done: Promise<Attachment>; abort: () => void };

interface Pending {
  key: string;
  file: File;
  sent: number;
  state: 'uploading' | 'done' | 'failed';
  attachment?: Attachment;
  error?: string;
  abort?: () => void;
}

let pendingSeq = 0;

export function Composer({
  disabled,
  busy,
  onSend,
  onStop,
  onTyping,
  onUpload,
  conversationId,
  replyTo,
  onCancelReply,
}: {
  disabled: boolean;
  busy: boolean;
  onSend: (content: string, attachments: Attachment[]) => void;
  onStop: () => void;
  onTyping: (on: boolean) => void;
  onUpload?: Uploader;
  conversationId: string;
  replyTo: { who: string; text: string } | null;
  onCancelReply: () => void;
}) {
  const [text, setText] = useState('');
  const [files, setFiles] = useState<Pending[]>([]);
  const [dragging, setDragging] = useState(false);
  const picker = useRef<HTMLInputElement>(null);

  const patch = useCallback((key: string, change: Partial<Pending>) => {
    setFiles((l) => l.map((f) => (f.key === key ? { ...f, ...change } : f)));
  }, []);

  const start = useCallback(
    (item: Pending) => {
      if (!onUpload) return;
      const { done, abort } = onUpload(item.file, (sent) => patch(item.key, { sent }));
      patch(item.key, { state: 'uploading', sent: 0, error: undefined, abort });
      done.then(
        (attachment) => patch(item.key, { state: 'done', attachment, sent: item.file.size }),
        (e: Error) => patch(item.key, { state: 'failed', error: e.message }),
      );
    },
    [onUpload, patch],
  );

  const add = (list: FileList | File[] | null | undefined) => {
    if (!onUpload || !list) return;
    const items = Array.from(list).map((file) => ({
      key: `f${(pendingSeq += 1)}`,
      file,
      sent: 0,
      state: 'uploading' as const,
    }));
    if (!items.length) return;
    setFiles((l) => [...l, ...items]);
    items.forEach(start);
  };

  const drop = (key: string) => {
    files.find((f) => f.key === key)?.abort?.();
    setFiles((l) => l.filter((f) => f.key !== key));
  };

  const uploading = files.some((f) => f.state === 'uploading');
  const ready = files.filter((f) => f.state === 'done' && f.attachment).map((f) => f.attachment as Attachment);
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
    setFiles([]);
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
    if ((!v && !ready.length) || disabled || uploading) return;
    stopTyping();
    onSend(v, ready);
    setText('');
    setFiles((l) => l.filter((f) => f.state === 'failed'));
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
    <form
      className={`composer ${dragging ? 'dragging' : ''}`}
      onSubmit={submit}
      aria-label="send a message"
      onDragOver={(e) => {
        if (!onUpload || !e.dataTransfer.types.includes('Files')) return;
        e.preventDefault();
        setDragging(true);
      }}
      onDragLeave={() => setDragging(false)}
      onDrop={(e) => {
        if (!onUpload || !e.dataTransfer.files.length) return;
        e.preventDefault();
        setDragging(false);
        add(e.dataTransfer.files);
      }}
    >
      {files.length > 0 && (
        <ul className="pending-files" aria-label="files to send" data-testid="pending-files">
          {files.map((f) => (
            <li
              key={f.key}
              className={`pending-file ${f.state}`}
              data-testid="pending-file"
              data-state={f.state}
              title={f.error ?? f.file.name}
            >
              <span className="att-name">{f.file.name || 'pasted file'}</span>
              <span className="muted small">
                {f.state === 'uploading' &&
                  `${Math.min(100, Math.round((100 * f.sent) / Math.max(1, f.file.size)))}% of ${formatSize(f.file.size)}`}
                {f.state === 'done' && formatSize(f.file.size)}
                {f.state === 'failed' && `Failed: ${f.error ?? 'upload failed'}`}
              </span>
              {f.state === 'uploading' && (
                <progress max={Math.max(1, f.file.size)} value={f.sent} aria-label={`Uploading ${f.file.name}`} />
              )}
              {f.state === 'failed' && (
                <button type="button" className="link" onClick={() => start(f)} data-testid="retry-upload">
                  Retry
                </button>
              )}
              <button
                type="button"
                className="icon-button"
                aria-label={`Remove ${f.file.name}`}
                onClick={() => drop(f.key)}
                data-testid="remove-upload"
              >
                ✕
              </button>
            </li>
          ))}
        </ul>
      )}
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
        onPaste={(e) => {
          if (onUpload && e.clipboardData.files.length) {
            e.preventDefault();
            add(e.clipboardData.files);
          }
        }}
        data-testid="composer-input"
      />
      <div className="composer-buttons">
        {onUpload && (
          <>
            <input
              ref={picker}
              type="file"
              multiple
              hidden
              data-testid="file-input"
              onChange={(e) => {
                add(e.target.files);
                e.target.value = '';
              }}
            />
            <button
              type="button"
              className="icon-button attach"
              aria-label="Attach files"
              title="Attach files (or paste / drop them here)"
              disabled={disabled}
              onClick={() => picker.current?.click()}
              data-testid="attach-button"
            >
              📎
            </button>
          </>
        )}
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
        <button
          type="submit"
          disabled={disabled || uploading || (!text.trim() && !ready.length)}
          data-testid="send-button"
        >
          Send
        </button>
      </div>
      </div>
    </form>
  );
}
