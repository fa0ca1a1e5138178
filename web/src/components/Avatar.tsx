import { hueOf, initials } from '../names';

/** Initials on a per-principal colour; agents get a rounded square. */
export function Avatar({ id, name, agent = false }: { id: string; name: string; agent?: boolean }) {
  return (
    <span
      aria-hidden="true"
      className={`avatar ${agent ? 'avatar-agent' : ''}`}
      style={{ ['--hue' as string]: String(hueOf(id)) }}
    >
      {initials(name)}
    </span>
  );
}
