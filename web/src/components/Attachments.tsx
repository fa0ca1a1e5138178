/** What a message carries: images inline (click for a lightbox), other files as chips. */
import { createContext, useContext, useEffect, useState } from 'react';
import type { Attachment } from '../protocol';

/** How the page reaches the files: a message's url (a signed link, a path on the gateway)
 * made absolute on the current gateway, and the bytes with the token once a link expired. */
export interface FileAccessApi {
  absolute: (url: string) => string;
  objectUrl: (attachmentId: string) => Promise<string>;
}
export const FileAccess = createContext<FileAccessApi | null>(null);

/** The image's src: the message's url, then (if that fails: expired) the bytes by token. */
function useImageSrc(a: Attachment): [string, () => void] {
  const files = useContext(FileAccess);
  const first = safeUrl(files ? files.absolute(a.url) : a.url) ?? '';
  const [src, setSrc] = useState(first);
  const [retried, setRetried] = useState(false);
  useEffect(() => setSrc(first), [first]);
  const onError = () => {
    if (retried || !files) return;
    setRetried(true);
    files.objectUrl(a.id).then(setSrc, () => undefined);
  };
  return [src, onError];
}

function InlineImage({ a, onOpen }: { a: Attachment; onOpen: () => void }) {
  const [src, onError] = useImageSrc(a);
  return (
    <button
      type="button"
      className="att-image"
      onClick={onOpen}
      aria-label={`Open image ${a.filename}`}
      data-testid="attachment-image"
    >
      <img src={src} alt={a.filename} loading="lazy" onError={onError} />
    </button>
  );
}

function LightboxImage({ a }: { a: Attachment }) {
  const [src, onError] = useImageSrc(a);
  return <img src={src} alt={a.filename} onError={onError} />;
}

export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** Only http(s), same-origin paths and inline images: never javascript: or other schemes. */
export function safeUrl(url: string): string | null {
  if (typeof url !== 'string' || !url) return null;
  try {
    const u = new URL(url, window.location.href);
    if (u.protocol === 'http:' || u.protocol === 'https:') return u.toString();
    if (u.protocol === 'data:' && /^data:image\/(png|jpeg|gif|webp);/i.test(url)) return url;
  } catch {
    return null;
  }
  return null;
}

function kindOf(a: Attachment): string {
  const ext = a.filename?.split('.').pop();
  const sub = a.mimeType?.split('/')[1] ?? '';
  return (ext && ext !== a.filename ? ext : sub).toUpperCase().slice(0, 6) || 'FILE';
}

export function Attachments({ list }: { list: Attachment[] | null | undefined }) {
  const [open, setOpen] = useState<Attachment | null>(null);
  const access = useContext(FileAccess);
  const abs = (url: string) => (access ? access.absolute(url) : url);
  useEffect(() => {
    if (!open) return;
    const onKey = (e: KeyboardEvent) => e.key === 'Escape' && setOpen(null);
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, [open]);
  if (!list?.length) return null;
  const images = list.filter((a) => /^image\//.test(a.mimeType ?? '') && safeUrl(a.url));
  const files = list.filter((a) => !images.includes(a));
  return (
    <div className="attachments" data-testid="attachments">
      {images.length > 0 && (
        <div className="att-images">
          {images.map((a) => (
            <InlineImage key={a.id} a={a} onOpen={() => setOpen(a)} />
          ))}
        </div>
      )}
      {files.length > 0 && (
        <ul className="att-files">
          {files.map((a) => {
            const href = safeUrl(abs(a.url));
            const body = (
              <>
                <span className="att-kind" aria-hidden="true">
                  {kindOf(a)}
                </span>
                <span className="att-text">
                  <span className="att-name">{a.filename}</span>
                  <span className="muted small">
                    {a.mimeType} · {formatSize(a.size)}
                  </span>
                </span>
              </>
            );
            return (
              <li key={a.id} data-testid="attachment-file">
                {href ? (
                  <a className="att-chip" href={href} target="_blank" rel="noopener noreferrer" download={a.filename}>
                    {body}
                  </a>
                ) : (
                  <span className="att-chip">{body}</span>
                )}
              </li>
            );
          })}
        </ul>
      )}
      {open && (
        <div
          className="lightbox"
          role="dialog"
          aria-modal="true"
          aria-label={open.filename}
          onClick={() => setOpen(null)}
          data-testid="lightbox"
        >
          <LightboxImage a={open} />
          <div className="lightbox-bar">
            <span>
              {open.filename} · {formatSize(open.size)}
            </span>
            <button type="button" onClick={() => setOpen(null)} aria-label="Close the image">
              ✕
            </button>
          </div>
        </div>
      )}
    </div>
  );
}
