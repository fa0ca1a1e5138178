/**
 * Where and when the client (re)connects: the `/ws` URL of a gateway with the resume's
 * `session` and `since` (docs/protocol.md section 1, "Exactness"), and the backoff between
 * attempts. Pure functions; the connection (connection.ts) decides when to call them.
 */

export function defaultBackoff(attempt: number): number {
  // capped exponential backoff with jitter: 250 ms, 500 ms, 1 s, 2 s, 4 s, then 5 s.
  const base = Math.min(5000, 250 * 2 ** attempt);
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

export function wsUrl(
  base: string,
  token: string,
  sessionId?: string | null,
  since?: Record<string, number>,
): string {
  const u = new URL('/ws', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.searchParams.set('access_token', token);
  if (sessionId) u.searchParams.set('session', sessionId);
  if (sessionId && since && Object.keys(since).length > 0) {
    // Exact resume (protocol 1, "Exactness"): our own last seqs are authoritative; the
    // session's saved ones may be up to a flush interval behind after a gateway crash.
    u.searchParams.set('since', base64url(JSON.stringify(since)));
  }
  return u.toString();
}

/** base64url without padding of an ASCII string (conversation ids are ASCII). */
export function base64url(text: string): string {
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
