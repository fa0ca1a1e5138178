/** Relative and exact times for messages and the conversation list. */

export function parseTime(iso: string | null | undefined): Date | null {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "now", "5 min", "14:02", "Mon", "3 Mar" — short, for lists and message headers. */
export function relativeTime(iso: string | null | undefined, now: number = Date.now()): string {
  const d = parseTime(iso);
  if (!d) return '';
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 45) return 'now';
  if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min`;
  const today = new Date(now);
  if (d.toDateString() === today.toDateString())
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (now - d.getTime() < 6 * 86400_000) return d.toLocaleDateString([], { weekday: 'short' });
  return d.toLocaleDateString([], { day: 'numeric', month: 'short' });
}

/** The full date and time, for a tooltip. */
export function exactTime(iso: string | null | undefined): string {
  const d = parseTime(iso);
  return d ? d.toLocaleString([], { dateStyle: 'full', timeStyle: 'medium' }) : '';
}

/** "Today", "Yesterday" or the date: the label of a day separator. */
export function dayLabel(iso: string | null | undefined, now: number = Date.now()): string {
  const d = parseTime(iso);
  if (!d) return '';
  const today = new Date(now);
  if (d.toDateString() === today.toDateString()) return 'Today';
  const y = new Date(now - 86400_000);
  if (d.toDateString() === y.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
}

export function dayKey(iso: string | null | undefined): string {
  const d = parseTime(iso);
  return d ? d.toDateString() : '';
}
