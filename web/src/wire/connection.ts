/**
 * The connection (`ParleyConnection`): one state machine over the WebSocket `/ws`. It connects
 * (rotating through the gateways with backoff, dial.ts), resumes with `session` and `since`
 * and joins again what `reconnected` did not restore, matches replies to commands by `id`
 * (a retryable command is sent again after a reconnect, others reject with `DISCONNECTED`),
 * and hands frames to subscribers (subscriptions.ts), durable ones once and in order
 * (ordering.ts). Socket, session, commands in flight and joined conversations change together
 * on every drop and reconnect, so they stay in one class; the typed commands and HTTP reads
 * on top of its public surface are client.ts.
 */

import { defaultBackoff, wsUrl } from './dial';
import { Ordering } from './ordering';
import { Subscriptions } from './subscriptions';
import {
  Ev,
  ParleyError,
  type ClientOptions,
  type ConnectedData,
  type ConnectionState,
  type ErrorBody,
  type EventHandler,
  type PrincipalInfo,
  type ServerFrame,
  type SocketFactory,
  type SocketLike,
} from './types';

interface Pending {
  event: string;
  data: Record<string, unknown>;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: unknown;
  retry: boolean;
  sent: boolean;
}

const OPEN = 1;

let clientSeq = 0;

export class ParleyConnection {
  readonly opts: Required<Omit<ClientOptions, 'socketFactory' | 'fetchImpl'>> & {
    socketFactory: SocketFactory;
    fetchImpl: typeof fetch;
  };
  state: ConnectionState = 'idle';
  sessionId: string | null = null;
  principal: PrincipalInfo | null = null;
  instanceId: string | null = null;
  /** The gateway the socket is (or was last) connected to. */
  currentBase: string;
  /** How many times the connection was re-established after a drop. */
  reconnects = 0;
  lastError: ErrorBody | null = null;

  private ws: SocketLike | null = null;
  private baseIndex = 0;
  private attempt = 0;
  private nextId = 0;
  private pending = new Map<string, Pending>();
  private subscriptions = new Subscriptions();
  private stateHandlers = new Set<(s: ConnectionState) => void>();
  private ordering = new Ordering();
  private joined = new Set<string>();
  private reconnectTimer: unknown = null;
  private wanted = false;
  private firstConnect: { resolve: (d: ConnectedData) => void; reject: (e: Error) => void } | null =
    null;

  constructor(options: ClientOptions) {
    if (!options.baseUrls.length) throw new Error('at least one gateway base URL is required');
    this.opts = {
      requestTimeoutMs: 15000,
      backoffMs: defaultBackoff,
      setTimeoutImpl: (fn, ms) => setTimeout(fn, ms),
      clearTimeoutImpl: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
      socketFactory: (url) => new WebSocket(url) as unknown as SocketLike,
      fetchImpl: (...args) => fetch(...args),
      ...options,
    };
    this.currentBase = options.baseUrls[0];
    clientSeq += 1;
  }

  // ---------------------------------------------------------------- subscriptions

  /** Subscribe to an event name, or '*' for every server frame that is not a reply. */
  on(event: string, handler: EventHandler): () => void {
    return this.subscriptions.on(event, handler);
  }

  onState(handler: (s: ConnectionState) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  lastSeq(conversationId: string): number {
    return this.ordering.lastSeq(conversationId);
  }

  /** Durable events dropped because their seq was already seen (duplicates). */
  get duplicatesDropped(): number {
    return this.ordering.duplicatesDropped;
  }

  /** Times a conversation's epoch changed (its history was found shorter; seqs reset). */
  get epochResets(): number {
    return this.ordering.epochResets;
  }

  joinedConversations(): string[] {
    return [...this.joined];
  }

  // ---------------------------------------------------------------- connection

  /** Connect; resolves with the `connected` data of the first session. */
  connect(): Promise<ConnectedData> {
    this.wanted = true;
    return new Promise((resolve, reject) => {
      this.firstConnect = { resolve, reject };
      this.setState('connecting');
      this.open();
    });
  }

  /** Close for good (sign-out). Pending requests are rejected. */
  close(): void {
    this.wanted = false;
    if (this.reconnectTimer !== null) this.opts.clearTimeoutImpl(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.close(1000, 'bye');
    }
    for (const [id, p] of this.pending) {
      this.opts.clearTimeoutImpl(p.timer);
      p.reject(new ParleyError('CLOSED', 'client closed'));
      this.pending.delete(id);
    }
    this.setState('closed');
  }

  /** Drop the socket as if the network failed (tests, the "simulate drop" dev button). */
  dropConnection(): void {
    this.ws?.close(4000, 'client dropped');
  }

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    for (const h of this.stateHandlers) h(s);
  }

  private open(): void {
    const since: Record<string, number> = {};
    for (const cid of this.joined) since[cid] = this.lastSeq(cid);
    const url = wsUrl(this.currentBase, this.opts.token, this.sessionId, since);
    let ws: SocketLike;
    try {
      ws = this.opts.socketFactory(url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.handleRaw(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onSocketClosed(ev.code);
    };
    ws.onerror = () => {
      /* a close always follows */
    };
  }

  private onSocketClosed(code: number): void {
    // Not-yet-sent or non-retryable requests cannot get a reply on a new socket.
    for (const [id, p] of this.pending) {
      if (p.sent && !p.retry) {
        this.opts.clearTimeoutImpl(p.timer);
        p.reject(new ParleyError('DISCONNECTED', 'connection lost before the reply'));
        this.pending.delete(id);
      } else {
        p.sent = false;
      }
    }
    if (!this.wanted) return;
    if (code === 4401) {
      // token expired: a new token is needed
      this.lastError = { code: 'UNAUTHORIZED', message: 'token expired' };
      this.failFirst(new ParleyError('UNAUTHORIZED', 'token expired'));
      this.wanted = false;
      this.setState('closed');
      return;
    }
    if (this.state === 'connecting' && this.firstConnect && this.attempt >= 1) {
      // The very first connection failed twice (most often: bad token → HTTP 401).
      this.lastError = {
        code: 'UNAUTHORIZED',
        message: 'could not connect (is the token valid?)',
      };
      this.failFirst(new ParleyError('UNAUTHORIZED', this.lastError.message));
      this.wanted = false;
      this.setState('closed');
      return;
    }
    if (this.state !== 'connecting') this.setState('reconnecting');
    this.scheduleReconnect();
  }

  private failFirst(err: Error): void {
    if (this.firstConnect) {
      this.firstConnect.reject(err);
      this.firstConnect = null;
    }
  }

  private scheduleReconnect(): void {
    const delay = this.opts.backoffMs(this.attempt);
    this.attempt += 1;
    // Rotate through the known gateways after a failed attempt on the current one.
    if (this.attempt > 1 && this.opts.baseUrls.length > 1) {
      this.baseIndex = (this.baseIndex + 1) % this.opts.baseUrls.length;
      this.currentBase = this.opts.baseUrls[this.baseIndex];
    }
    this.reconnectTimer = this.opts.setTimeoutImpl(() => {
      this.reconnectTimer = null;
      if (this.wanted) this.open();
    }, delay);
  }

  // ---------------------------------------------------------------- frames

  private handleRaw(raw: unknown): void {
    if (typeof raw !== 'string') return;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(raw) as ServerFrame;
    } catch {
      return;
    }
    if (!frame || typeof frame.event !== 'string') return;
    this.handleFrame(frame);
  }

  /** Process one server frame (public for tests). */
  handleFrame(frame: ServerFrame): void {
    if (frame.event === Ev.CONNECTED || frame.event === Ev.RECONNECTED) {
      this.onSession(frame as ServerFrame<ConnectedData>);
      return;
    }
    // Our command ids are strings; an integer id is not one of ours.
    const replyTo = typeof frame.id === 'string' ? frame.id : null;
    if (replyTo !== null && this.pending.has(replyTo)) {
      const p = this.pending.get(replyTo)!;
      if (p.event === frame.event || frame.event === Ev.ERROR) {
        this.pending.delete(replyTo);
        this.opts.clearTimeoutImpl(p.timer);
        if (frame.success) p.resolve(frame.data);
        else
          p.reject(
            new ParleyError(
              frame.error?.code ?? 'INTERNAL_ERROR',
              frame.error?.message ?? 'request failed',
              frame.error?.details,
            ),
          );
        return;
      }
    }
    // Durable events: in seq order, no duplicates; a new epoch starts over from this frame
    // and tells the app (it reloads the conversation's history).
    const epoch = this.ordering.epoch(frame);
    if (epoch === 'stale') return;
    if (epoch === 'reset') this.subscriptions.emit('epoch', frame);
    if (!this.ordering.advance(frame)) return;
    if (frame.event === Ev.ERROR && frame.error) this.lastError = frame.error;
    this.subscriptions.publish(frame);
  }

  private onSession(frame: ServerFrame<ConnectedData>): void {
    const data = frame.data as ConnectedData;
    const resumed = frame.event === Ev.RECONNECTED;
    const wasDropped = this.sessionId !== null;
    this.sessionId = data?.sessionId ?? this.sessionId;
    this.principal = data?.principal ?? this.principal;
    this.instanceId = (data?.instanceId as string) ?? null;
    this.attempt = 0;
    this.lastError = null;
    if (wasDropped) this.reconnects += 1;
    this.setState('open');
    if (this.firstConnect) {
      this.firstConnect.resolve(data);
      this.firstConnect = null;
    }
    if (wasDropped) {
      // Resume every joined conversation from the last seq we actually received. After
      // `reconnected` the gateway restored the session's conversations already, from the last
      // seqs we sent in `since` (exact: nothing twice, nothing missed); the others (and all of
      // them after `connected`: the session expired) are joined again from our lastSeq.
      const restored = new Set(
        resumed ? (data?.conversations ?? []).map((c) => c.conversationId) : [],
      );
      for (const cid of this.joined) {
        if (restored.has(cid)) continue;
        this.request(Ev.CONVERSATION_JOIN, {
          conversationId: cid,
          sinceSeq: this.lastSeq(cid),
        }).catch(() => undefined);
      }
    }
    // (Re)send what is waiting: queued commands and retryable ones that lost their socket.
    for (const [id, p] of this.pending) if (!p.sent) this.transmit(id, p);
    this.subscriptions.publish(frame); // frame.event: connected or reconnected
  }

  private transmit(id: string, p: Pending): void {
    if (!this.ws || this.ws.readyState !== OPEN || this.state !== 'open') return;
    this.ws.send(JSON.stringify({ event: p.event, id, data: p.data }));
    p.sent = true;
  }

  // ---------------------------------------------------------------- commands

  /**
   * Send a command and wait for its reply. With `retry`, the command survives a dropped
   * connection and is sent again after the reconnect (only for idempotent commands).
   */
  request<T = unknown>(
    event: string,
    data: Record<string, unknown>,
    options: { retry?: boolean; timeoutMs?: number } = {},
  ): Promise<T> {
    const id = `c${clientSeq}-${++this.nextId}`;
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.opts.requestTimeoutMs;
      const p: Pending = {
        event,
        data,
        resolve: resolve as (v: unknown) => void,
        reject,
        retry: options.retry ?? false,
        sent: false,
        timer: this.opts.setTimeoutImpl(() => {
          if (this.pending.delete(id))
            reject(new ParleyError('TIMEOUT', `no reply to ${event} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.pending.set(id, p);
      if (this.state === 'open') this.transmit(id, p);
      else if (!p.retry && this.state !== 'connecting' && this.state !== 'reconnecting') {
        this.pending.delete(id);
        this.opts.clearTimeoutImpl(p.timer);
        reject(new ParleyError('DISCONNECTED', 'not connected'));
      }
    });
  }

  /** Fire-and-forget (typing, presence): dropped when not connected. */
  notify(event: string, data: Record<string, unknown>): void {
    if (this.ws && this.ws.readyState === OPEN && this.state === 'open')
      this.ws.send(JSON.stringify({ event, data }));
  }

  /** Join a conversation, receiving every durable event with seq > sinceSeq. */
  async join(conversationId: string, sinceSeq?: number): Promise<unknown> {
    const since = this.ordering.joinFrom(conversationId, sinceSeq);
    this.joined.add(conversationId);
    try {
      return await this.request(
        Ev.CONVERSATION_JOIN,
        { conversationId, sinceSeq: since },
        { retry: true },
      );
    } catch (e) {
      this.joined.delete(conversationId);
      throw e;
    }
  }

  async leave(conversationId: string): Promise<void> {
    this.joined.delete(conversationId);
    await this.request(Ev.CONVERSATION_LEAVE, { conversationId }).catch(() => undefined);
  }
}
