import { describe, expect, it } from 'vitest';
import {
  actorOf,
  Ev,
  ParleyClient,
  ParleyError,
  wsUrl,
  base64url,
  type ServerFrame,
  type SocketLike,
} from './protocol';

/** A scripted WebSocket: records what the client sends, lets the test push frames and close. */
class FakeSocket implements SocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: Array<{ event: string; id?: string; data: Record<string, unknown> }> = [];
  constructor(public url: string) {}
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  // test helpers
  accept(event: string = Ev.CONNECTED, sessionId = 'ses-1', extra: Record<string, unknown> = {}) {
    this.readyState = 1;
    this.push({
      event,
      success: true,
      data: { sessionId, principal: { id: 'user-1', kind: 'user' }, instanceId: 'gw-a', ...extra },
    });
  }
  push(frame: ServerFrame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  reply(i: number, data: unknown, success = true) {
    const cmd = this.sent[i];
    this.push(
      success
        ? { event: cmd.event, id: cmd.id, success, data }
        : { event: cmd.event, id: cmd.id, success, error: data as never },
    );
  }
}

function harness(baseUrls = ['http://gw-a:8000']) {
  const sockets: FakeSocket[] = [];
  const timers: Array<{ fn: () => void; ms: number; cleared: boolean }> = [];
  const client = new ParleyClient({
    baseUrls,
    token: 'tok',
    socketFactory: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
    backoffMs: () => 10,
    setTimeoutImpl: (fn, ms) => {
      const t = { fn, ms, cleared: false };
      timers.push(t);
      return t;
    },
    clearTimeoutImpl: (h) => {
      (h as { cleared: boolean }).cleared = true;
    },
  });
  /** Run the pending reconnect timers (the short ones; request timeouts are long). */
  const fireReconnect = () => {
    for (const t of timers.splice(0))
      if (!t.cleared && t.ms < 1000) t.fn();
      else timers.push(t);
  };
  return { client, sockets, fireReconnect, timers };
}

const msg = (cid: string, seq: number) => ({
  event: Ev.MESSAGE_NEW,
  success: true,
  conversationId: cid,
  seq,
  data: { _id: `m${seq}`, conversationId: cid, role: 'user', content: `hello ${seq}` },
});

describe('wsUrl', () => {
  it('builds ws(s) URLs with the token and the session', () => {
    expect(wsUrl('http://h:1', 't')).toBe('ws://h:1/ws?access_token=t');
    expect(wsUrl('https://h', 't k', 'ses-9')).toBe('wss://h/ws?access_token=t+k&session=ses-9');
  });
});

describe('ParleyClient', () => {
  it('connects and resolves with the connected data', async () => {
    const { client, sockets } = harness();
    const p = client.connect();
    expect(client.state).toBe('connecting');
    expect(sockets[0].url).toBe('ws://gw-a:8000/ws?access_token=tok');
    sockets[0].accept();
    const d = await p;
    expect(d.sessionId).toBe('ses-1');
    expect(client.state).toBe('open');
    expect(client.principal?.id).toBe('user-1');
  });

  it('matches replies to requests by id, success and failure', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const a = client.request('conversation:create', { title: 'A' });
    const b = client.request('message:send', { conversationId: 'x', content: '' });
    expect(sockets[0].sent.map((f) => f.event)).toEqual(['conversation:create', 'message:send']);
    expect(sockets[0].sent[0].id).not.toBe(sockets[0].sent[1].id);
    sockets[0].reply(1, { code: 'VALIDATION_ERROR', message: 'content must not be empty' }, false);
    sockets[0].reply(0, { conversationId: 'conv-1' });
    await expect(a).resolves.toEqual({ conversationId: 'conv-1' });
    const err = await b.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ParleyError);
    expect((err as ParleyError).code).toBe('VALIDATION_ERROR');
  });

  it('delivers durable events in seq order and drops duplicates', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const seen: number[] = [];
    client.on(Ev.MESSAGE_NEW, (f) => seen.push(f.seq!));
    for (const s of [1, 2, 2, 3, 1, 4]) sockets[0].push(msg('conv-1', s));
    sockets[0].push(msg('conv-2', 1));
    expect(seen).toEqual([1, 2, 3, 4, 1]);
    expect(client.lastSeq('conv-1')).toBe(4);
    expect(client.lastSeq('conv-2')).toBe(1);
    expect(client.duplicatesDropped).toBe(2);
  });

  it('passes ephemeral events (no seq) through every time', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const deltas: string[] = [];
    client.on(Ev.MESSAGE_STREAM_DELTA, (f) => deltas.push((f.data as { delta: string }).delta));
    sockets[0].push({
      event: Ev.MESSAGE_STREAM_DELTA,
      success: true,
      conversationId: 'conv-1',
      data: { streamId: 's', delta: 'a', index: 0 },
    });
    sockets[0].push({
      event: Ev.MESSAGE_STREAM_DELTA,
      success: true,
      conversationId: 'conv-1',
      data: { streamId: 's', delta: 'b', index: 1 },
    });
    expect(deltas).toEqual(['a', 'b']);
  });

  it('join sends sinceSeq and ignores replays at or below it', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const j = client.join('conv-1', 5);
    expect(sockets[0].sent[0]).toMatchObject({
      event: 'conversation:join',
      data: { conversationId: 'conv-1', sinceSeq: 5 },
    });
    sockets[0].reply(0, { lastSeq: 7 });
    await j;
    const seen: number[] = [];
    client.on(Ev.MESSAGE_NEW, (f) => seen.push(f.seq!));
    for (const s of [4, 5, 6, 7]) sockets[0].push(msg('conv-1', s));
    expect(seen).toEqual([6, 7]);
    expect(client.joinedConversations()).toEqual(['conv-1']);
  });

  it('resumes with its session and its own lastSeqs: nothing twice, nothing missed', async () => {
    const { client, sockets, fireReconnect } = harness();
    const states: string[] = [];
    client.onState((s) => states.push(s));
    const c = client.connect();
    sockets[0].accept(Ev.CONNECTED, 'ses-42');
    await c;
    const j = client.join('conv-1', 0);
    sockets[0].reply(0, { lastSeq: 0 });
    await j;
    const seen: number[] = [];
    client.on(Ev.MESSAGE_NEW, (f) => seen.push(f.seq!));
    sockets[0].push(msg('conv-1', 1));
    sockets[0].push(msg('conv-1', 2));

    sockets[0].close(1006, 'gone'); // the gateway died
    expect(client.state).toBe('reconnecting');
    fireReconnect();
    expect(sockets).toHaveLength(2);
    const url = new URL(sockets[1].url);
    expect(url.searchParams.get('session')).toBe('ses-42');
    // our own last seqs, base64url JSON: authoritative over the session's saved ones
    expect(url.searchParams.get('since')).toBe(base64url(JSON.stringify({ 'conv-1': 2 })));
    sockets[1].accept(Ev.RECONNECTED, 'ses-42', {
      conversations: [{ conversationId: 'conv-1', lastSeq: 2 }],
    });
    expect(client.state).toBe('open');
    expect(client.reconnects).toBe(1);
    // restored from our lastSeq by the gateway: no second join
    expect(sockets[1].sent.find((f) => f.event === 'conversation:join')).toBeUndefined();
    sockets[1].push(msg('conv-1', 3));
    sockets[1].push(msg('conv-1', 4));
    expect(seen).toEqual([1, 2, 3, 4]);
    expect(states).toEqual(['connecting', 'open', 'reconnecting', 'open']);
  });

  it('starts over when a conversation begins a new epoch (seqs used again)', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const j = client.join('conv-1', 0);
    sockets[0].reply(0, { lastSeq: 0 });
    await j;
    const seen: string[] = [];
    const resets: number[] = [];
    client.on(Ev.MESSAGE_NEW, (f) => seen.push(`${f.epoch ?? 0}:${f.seq}`));
    client.on('epoch', (f) => resets.push(f.epoch!));
    for (const s of [1, 2, 3]) sockets[0].push({ ...msg('conv-1', s), epoch: 0 });
    // the store lost 3; seq 3 is used again in epoch 1: not a duplicate
    sockets[0].push({ ...msg('conv-1', 3), epoch: 1 });
    sockets[0].push({ ...msg('conv-1', 4), epoch: 1 });
    sockets[0].push({ ...msg('conv-1', 4), epoch: 0 }); // a late one from before: void
    expect(seen).toEqual(['0:1', '0:2', '0:3', '1:3', '1:4']);
    expect(resets).toEqual([1]);
    expect(client.lastSeq('conv-1')).toBe(4);
  });

  it('joins again from lastSeq what the resume did not restore', async () => {
    const { client, sockets, fireReconnect } = harness();
    const c = client.connect();
    sockets[0].accept(Ev.CONNECTED, 'ses-42');
    await c;
    const j = client.join('conv-1', 0);
    sockets[0].reply(0, { lastSeq: 0 });
    await j;
    sockets[0].push(msg('conv-1', 1));
    sockets[0].close(1006, 'gone');
    fireReconnect();
    sockets[1].accept(Ev.CONNECTED, 'ses-43'); // the session expired: a new one
    const rejoin = sockets[1].sent.find((f) => f.event === 'conversation:join');
    expect(rejoin?.data).toEqual({ conversationId: 'conv-1', sinceSeq: 1 });
  });

  it('retries message:send after a drop with the same clientMessageId', async () => {
    const { client, sockets, fireReconnect } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const sent = client.sendMessage('conv-1', 'hi', 'cm-1');
    expect(sockets[0].sent[0]).toMatchObject({
      event: 'message:send',
      data: { clientMessageId: 'cm-1', content: 'hi' },
    });
    sockets[0].close(1001, 'draining');
    fireReconnect();
    sockets[1].accept(Ev.RECONNECTED);
    const again = sockets[1].sent.find((f) => f.event === 'message:send');
    expect(again?.data).toEqual({ conversationId: 'conv-1', content: 'hi', clientMessageId: 'cm-1' });
    sockets[1].push({
      event: 'message:send',
      id: again!.id,
      success: true,
      data: { _id: 'm1', seq: 1, clientMessageId: 'cm-1' },
    });
    await expect(sent).resolves.toMatchObject({ _id: 'm1' });
  });

  it('rejects non-idempotent requests that lost their socket', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    const r = client.request('message:stop', { conversationId: 'conv-1' });
    sockets[0].close(1006);
    await expect(r).rejects.toMatchObject({ code: 'DISCONNECTED' });
  });

  it('falls back to the next gateway when the current one keeps failing', async () => {
    const { client, sockets, fireReconnect } = harness(['http://gw-a:1', 'http://gw-b:2']);
    const c = client.connect();
    sockets[0].accept(Ev.CONNECTED, 'ses-7');
    await c;
    sockets[0].close(1006);
    fireReconnect();
    expect(sockets[1].url).toContain('gw-a:1');
    sockets[1].close(1006); // still down
    fireReconnect();
    expect(sockets[2].url).toMatch(/^ws:\/\/gw-b:2\/ws\?.*session=ses-7/);
    sockets[2].accept(Ev.RECONNECTED, 'ses-7');
    expect(client.currentBase).toBe('http://gw-b:2');
  });

  it('gives up on the first connection when the token is refused', async () => {
    const { client, sockets, fireReconnect } = harness();
    const c = client.connect();
    sockets[0].close(1006);
    fireReconnect();
    sockets[1].close(1006);
    await expect(c).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    expect(client.state).toBe('closed');
  });

  it('closes for good on 4401 (token expired)', async () => {
    const { client, sockets } = harness();
    const c = client.connect();
    sockets[0].accept();
    await c;
    sockets[0].close(4401, 'token expired');
    expect(client.state).toBe('closed');
    expect(client.lastError?.code).toBe('UNAUTHORIZED');
  });

  it('unwraps the HTTP success envelope and raises the error envelope', async () => {
    const calls: Array<{ url: string; auth: string | null }> = [];
    const fetchImpl = (async (url: string, init?: RequestInit) => {
      const auth = new Headers(init?.headers).get('Authorization');
      calls.push({ url, auth });
      if (url.includes('/messages'))
        return new Response(
          JSON.stringify({
            success: true,
            data: { items: [{ _id: 'b', seq: 9 }, { _id: 'a', seq: 8 }], hasMore: true },
          }),
          { status: 200 },
        );
      return new Response(
        JSON.stringify({ success: false, error: { code: 'FORBIDDEN', message: 'nope' } }),
        { status: 403 },
      );
    }) as unknown as typeof fetch;
    const client = new ParleyClient({ baseUrls: ['http://gw:1'], token: 'tok', fetchImpl });
    const page = await client.messages('conv-1', { beforeSeq: 10, limit: 2 });
    expect(page.items.map((m) => m._id)).toEqual(['a', 'b']);
    expect(page.hasMore).toBe(true);
    expect(calls[0].url).toBe('http://gw:1/v1/conversations/conv-1/messages?beforeSeq=10&limit=2');
    expect(calls[0].auth).toBe('Bearer tok');
    await expect(client.getConversation('conv-1')).rejects.toMatchObject({ code: 'FORBIDDEN' });
  });

  it('finds who an ephemeral event is about', () => {
    expect(actorOf({ principalId: 'user-2', conversationId: 'c' })).toBe('user-2');
    expect(actorOf({ agentId: 'agent-demo' })).toBe('agent-demo');
    expect(actorOf(null)).toBeNull();
  });
});
