import { useState, type FormEvent } from 'react';

export interface SignInProps {
  onToken: (token: string) => void;
  error: string | null;
  busy: boolean;
}

/** Paste a JWT, or (development gateways only) ask the gateway for a dev token. */
export function SignIn({ onToken, error, busy }: SignInProps) {
  const [token, setToken] = useState('');
  const [sub, setSub] = useState('user-1');
  const [name, setName] = useState('');
  const [devError, setDevError] = useState<string | null>(null);
  const [devBusy, setDevBusy] = useState(false);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const t = token.trim();
    if (t) onToken(t);
  };

  const devSignIn = async (e: FormEvent) => {
    e.preventDefault();
    setDevError(null);
    setDevBusy(true);
    try {
      // GET: the gateway's HTTP side answers GET only. Development gateways only.
      const q = new URLSearchParams({ sub: sub.trim(), kind: 'user' });
      if (name.trim()) q.set('name', name.trim());
      const res = await fetch(`/v1/dev/token?${q.toString()}`, {
        headers: { Accept: 'application/json' },
      });
      const body = (await res.json().catch(() => null)) as Record<string, unknown> | null;
      const data = (body && 'data' in body ? body.data : body) as Record<string, unknown> | null;
      const t = data && (data.token ?? data.accessToken ?? data.access_token);
      if (!res.ok || typeof t !== 'string') {
        const err = (body?.error as { message?: string } | undefined)?.message;
        setDevError(
          res.status === 404 || res.status === 405
            ? 'This gateway offers no development sign-in (production mode?). Paste a token instead.'
            : (err ?? `sign-in failed (${res.status})`),
        );
        return;
      }
      onToken(t);
    } catch {
      setDevError('The gateway could not be reached.');
    } finally {
      setDevBusy(false);
    }
  };

  return (
    <main className="signin" aria-labelledby="signin-title">
      <h1 id="signin-title">
        <span aria-hidden="true" className="logo" /> Parley
      </h1>
      <p className="muted">People and AI agents in live conversations.</p>

      <form onSubmit={submit} className="card" aria-label="Sign in with a token">
        <h2>Sign in with a token</h2>
        <label htmlFor="token-input">Access token (JWT)</label>
        <textarea
          id="token-input"
          rows={4}
          value={token}
          onChange={(e) => setToken(e.target.value)}
          placeholder="eyJhbGciOi…"
          spellCheck={false}
          autoComplete="off"
        />
        <p className="hint">
          Mint one with <code>parley token --sub user-1 --kind user</code>.
        </p>
        <button type="submit" disabled={busy || !token.trim()}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
        {error && (
          <p className="error-text" role="alert">
            {error}
          </p>
        )}
      </form>

      <form onSubmit={devSignIn} className="card" aria-label="Development sign-in">
        <h2>Development sign-in</h2>
        <p className="hint">Only on gateways running with PARLEY_ENVIRONMENT=development.</p>
        <label htmlFor="dev-sub">User id</label>
        <input id="dev-sub" value={sub} onChange={(e) => setSub(e.target.value)} required />
        <label htmlFor="dev-name">Display name (optional)</label>
        <input id="dev-name" value={name} onChange={(e) => setName(e.target.value)} />
        <button type="submit" disabled={devBusy || busy || !sub.trim()}>
          {devBusy ? 'Asking the gateway…' : 'Dev sign-in'}
        </button>
        {devError && (
          <p className="error-text" role="alert">
            {devError}
          </p>
        )}
      </form>
    </main>
  );
}
