/** The address names the open conversation: `?c=<conversationId>` (other parameters kept). */

export function conversationInUrl(): string | null {
  const v = new URLSearchParams(window.location.search).get('c');
  return v && /^[A-Za-z0-9_-]{1,128}$/.test(v) ? v : null;
}

function urlFor(cid: string | null): string {
  const q = new URLSearchParams(window.location.search);
  if (cid) q.set('c', cid);
  else q.delete('c');
  const s = q.toString();
  return `${window.location.pathname}${s ? `?${s}` : ''}`;
}

/** Record a navigation (Back returns to the previous conversation or the list). */
export function pushConversation(cid: string | null): void {
  if (conversationInUrl() === cid) return;
  history.pushState({ c: cid }, '', urlFor(cid));
}

export function replaceConversation(cid: string | null): void {
  history.replaceState({ c: cid }, '', urlFor(cid));
}
