/** Display names and initials: the token's `name` when the page has seen it, else the id. */

export function displayName(id: string | null | undefined, names: Record<string, string>): string {
  if (!id) return 'someone';
  return names[id] ?? id;
}

/** One or two letters for an avatar ("Alice Martin" → "AM", "user-bob" → "B"). */
export function initials(name: string): string {
  const clean = name.replace(/^(user|agent)[-_]/, '').trim(); // ids like user-bob, not names
  const words = clean.split(/[\s._-]+/).filter(Boolean);
  if (!words.length) return '?';
  const letters = words.length > 1 ? words[0][0] + words[1][0] : words[0].slice(0, 1);
  return letters.toUpperCase();
}

/** A stable hue per principal, so the same person keeps the same avatar colour. */
export function hueOf(id: string): number {
  let h = 2166136261; // FNV-1a, then spread by the golden angle: near ids get far hues
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619) >>> 0;
  return Math.round((h % 1000) * 137.508) % 360;
}
