/**
 * Parley client protocol (docs/protocol.md) — the one module of the web UI that speaks the wire.
 *
 * - Types, event names and error codes are generated from `libs/contract`
 *   (src/generated/contract.ts) and re-exported here; only the client's own types live here.
 * - `ParleyClient`: WebSocket `/ws?access_token=…`, request/reply by `id`, event subscription,
 *   per-conversation `lastSeq`, resume with `session=<sessionId>`, dedupe of durable events by
 *   `seq`, retry of idempotent commands (message:send with clientMessageId) after a reconnect,
 *   and the HTTP `/v1` reads with a bearer token.
 *
 * Size: over 400 lines because `ParleyClient` is one state machine (socket, session, lastSeq
 * and epoch per conversation, commands in flight) that every method reads; its HTTP reads
 * are the seam to split next (they share only the token and the base URLs).
 */

// ------------------------------------------------------------------ the contract (generated)

// Names, schemas and frames are generated from libs/contract (src/generated/contract.ts,
// `make generate`); a test fails when they drift from the Python models.
import { Event } from './generated/contract';
import type {
  Attachment,
  ConnectedData as GeneratedConnectedData,
  Conversation,
  ErrorBody as GeneratedErrorBody,
  Message,
  Principal,
  ReadReply,
  ServerFrame as GeneratedServerFrame,
} from './generated/contract';

export type {
  ActivityData,
  Attachment,
  CommandPayloads,
  CommandReplies,
  Conversation,
  ConversationJoinedData,
  Cursor,
  DeliveredData,
  EventData,
  MemberCursor,
  Message,
  MessageStatus,
  MessageType,
  Participant,
  PresenceData,
  ReadData,
  ReadReply,
  Role,
  StreamDelta,
  StreamEnd,
  StreamStart,
  Task,
  Thinking,
  ToolCall,
  ToolResult,
  TypingData,
  Usage,
} from './generated/contract';
export { ErrorCode, Event } from './generated/contract';

/** Every event name, as `Ev.MESSAGE_SEND` (the contract's `Event`). */
export const Ev = Event;
export type EventName = `${Event}`;

export type PrincipalInfo = Principal;
export type ConnectedData = GeneratedConnectedData;

/** An agent the system serves (GET /v1/agents). */
export interface AgentInfo {
  id: string;
  name: string;
  description?: string;
  online?: boolean;
}

/** `code` is a string: a newer server may send a code this build does not know, and the
 * client adds its own (`TIMEOUT`, `DISCONNECTED`, `CLOSED`). */
export type ErrorBody = Omit<GeneratedErrorBody, 'code'> & { code: string };

/** A server frame whose `data` is typed by the caller (`ServerFrame<EventData['message:new']>`). */
export type ServerFrame<T = unknown> = Omit<
  GeneratedServerFrame,
  'data' | 'error' | 'timestamp'
> & {
  data?: T;
  error?: ErrorBody | null;
  timestamp?: string;
};

export class ParleyError extends Error {
  readonly code: string;
  readonly details?: Record<string, unknown> | null;
  constructor(code: string, message: string, details?: Record<string, unknown> | null) {
    super(message);
    this.name = 'ParleyError';
    this.code = code;
    this.details = details;
  }
}

// ------------------------------------------------------------------ client

export type ConnectionState =
  | 'idle' // never connected
  | 'connecting' // first connection in progress
  | 'open' // connected (new session)
  | 'reconnecting' // dropped, retrying with the session
  | 'closed'; // closed by us (sign-out) or refused (bad token)

export type EventHandler = (frame: ServerFrame) => void;

/** The minimal WebSocket surface the client needs (browser WebSocket, or a fake in tests). */
export interface SocketLike {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = (url: string) => SocketLike;

export interface ClientOptions {
  /** Gateway base URLs (http(s)://host:port); the first is preferred, the others are fallbacks. */
  baseUrls: string[];
  token: string;
  socketFactory?: SocketFactory;
  fetchImpl?: typeof fetch;
  requestTimeoutMs?: number;
  /** Backoff before reconnect attempt n (0-based), in ms. */
  backoffMs?: (attempt: number) => number;
  setTimeoutImpl?: (fn: () => void, ms: number) => unknown;
  clearTimeoutImpl?: (handle: unknown) => void;
}

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

let clientSeq = 0;

export function newClientMessageId(): string {
  const rnd =
    typeof crypto !== 'undefined' && 'randomUUID' in crypto
      ? crypto.randomUUID()
      : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `cm-${rnd}`;
}

export class ParleyClient {
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
  /** Durable events dropped because their seq was already seen (duplicates). */
  duplicatesDropped = 0;
  /** How many times the connection was re-established after a drop. */
  reconnects = 0;
  lastError: ErrorBody | null = null;

  private ws: SocketLike | null = null;
  private baseIndex = 0;
  private attempt = 0;
  private nextId = 0;
  private pending = new Map<string, Pending>();
  private handlers = new Map<string, Set<EventHandler>>();
  private stateHandlers = new Set<(s: ConnectionState) => void>();
  private lastSeqs = new Map<string, number>();
  private epochs = new Map<string, number>();
  /** Times a conversation's epoch changed (its history was found shorter; seqs reset). */
  epochResets = 0;
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
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
    return () => set.delete(handler);
  }

  onState(handler: (s: ConnectionState) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  lastSeq(conversationId: string): number {
    return this.lastSeqs.get(conversationId) ?? 0;
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
    // A new epoch (issue 11): the server's history of the conversation was found shorter
    // than the seqs it handed out, so seqs may be used again: what we hold is void. Start
    // over from this frame and tell the app (it reloads the conversation's history).
    if (frame.conversationId && typeof frame.epoch === 'number') {
      const known = this.epochs.get(frame.conversationId) ?? 0;
      if (frame.epoch < known && typeof frame.seq === 'number') {
        this.duplicatesDropped += 1; // from before the reset: void
        return;
      }
      if (frame.epoch > known) {
        this.epochs.set(frame.conversationId, frame.epoch);
        if (known > 0 || this.lastSeqs.has(frame.conversationId)) {
          this.epochResets += 1;
          const from = typeof frame.seq === 'number' ? frame.seq - 1 : 0;
          this.lastSeqs.set(frame.conversationId, from);
          this.emit('epoch', frame);
        }
      }
    }
    // Durable events: in seq order, no duplicates.
    if (frame.conversationId && typeof frame.seq === 'number') {
      const last = this.lastSeqs.get(frame.conversationId) ?? 0;
      if (frame.seq <= last) {
        this.duplicatesDropped += 1;
        return;
      }
      this.lastSeqs.set(frame.conversationId, frame.seq);
    }
    if (frame.event === Ev.ERROR && frame.error) this.lastError = frame.error;
    this.emit(frame.event, frame);
    this.emit('*', frame);
  }

  private emit(event: string, frame: ServerFrame): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        h(frame);
      } catch (e) {
        console.error('parley handler failed', event, e);
      }
    }
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
    this.emit(resumed ? Ev.RECONNECTED : Ev.CONNECTED, frame);
    this.emit('*', frame);
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
    const since = Math.max(sinceSeq ?? 0, this.lastSeq(conversationId));
    this.lastSeqs.set(conversationId, since);
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

  createConversation(data: {
    title?: string;
    agentId?: string;
    participants?: string[];
  }): Promise<Conversation> {
    return this.request<Conversation>(Ev.CONVERSATION_CREATE, data);
  }

  /** Post a text message; idempotent by clientMessageId, so it is retried across reconnects.
   * `attachmentIds`: files uploaded first (uploadAttachment), sent by id. */
  sendMessage(
    conversationId: string,
    content: string,
    clientMessageId: string = newClientMessageId(),
    parentMessageId?: string | null,
    attachmentIds?: string[],
  ): Promise<Message> {
    return this.request<Message>(
      Ev.MESSAGE_SEND,
      {
        conversationId,
        content,
        clientMessageId,
        ...(parentMessageId ? { parentMessageId } : {}),
        ...(attachmentIds?.length ? { attachments: attachmentIds } : {}),
      },
      { retry: true, timeoutMs: 60000 },
    );
  }

  /** Upload one file to a conversation (POST /v1/conversations/{id}/attachments, the raw
   * body); XMLHttpRequest for its upload progress. `abort()` cancels it. */
  uploadAttachment(
    conversationId: string,
    file: Blob & { name?: string },
    onProgress?: (sent: number, total: number) => void,
  ): { done: Promise<Attachment>; abort: () => void } {
    const url = new URL(
      `/v1/conversations/${encodeURIComponent(conversationId)}/attachments`,
      this.currentBase,
    );
    url.searchParams.set('filename', file.name || 'file');
    const xhr = new XMLHttpRequest();
    const done = new Promise<Attachment>((resolve, reject) => {
      xhr.open('POST', url.toString());
      xhr.setRequestHeader('Authorization', `Bearer ${this.opts.token}`);
      xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      xhr.upload.onprogress = (e) => onProgress?.(e.loaded, e.lengthComputable ? e.total : file.size);
      xhr.onload = () => {
        let body: { data?: Attachment; error?: ErrorBody } | null = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = null;
        }
        if (xhr.status === 201 && body?.data) resolve(body.data);
        else
          reject(
            new ParleyError(
              body?.error?.code ?? `HTTP_${xhr.status}`,
              body?.error?.message ?? `upload failed (${xhr.status || 'network error'})`,
              body?.error?.details,
            ),
          );
      };
      xhr.onerror = () => reject(new ParleyError('NETWORK', 'upload failed: network error'));
      xhr.onabort = () => reject(new ParleyError('ABORTED', 'upload cancelled'));
      xhr.send(file);
    });
    return { done, abort: () => xhr.abort() };
  }

  /** An attachment's bytes with the token (when its signed link has expired): an object URL. */
  async attachmentObjectUrl(attachmentId: string): Promise<string> {
    const res = await this.opts.fetchImpl(
      new URL(`/v1/attachments/${encodeURIComponent(attachmentId)}`, this.currentBase).toString(),
      { headers: { Authorization: `Bearer ${this.opts.token}` } },
    );
    if (!res.ok) throw new ParleyError(`HTTP_${res.status}`, `download failed (${res.status})`);
    return URL.createObjectURL(await res.blob());
  }

  /** A url of a message (a path on the gateway) as an absolute URL on the current gateway. */
  absoluteUrl(url: string): string {
    return url.startsWith('/') ? new URL(url, this.currentBase).toString() : url;
  }

  editMessage(conversationId: string, messageId: string, content: string): Promise<Message> {
    return this.request<Message>(Ev.MESSAGE_EDIT, { conversationId, messageId, content });
  }

  deleteMessage(conversationId: string, messageId: string): Promise<Message> {
    return this.request<Message>(Ev.MESSAGE_DELETE, { conversationId, messageId });
  }

  react(conversationId: string, messageId: string, emoji: string, remove = false): Promise<Message> {
    return this.request<Message>(Ev.MESSAGE_REACT, {
      conversationId,
      messageId,
      emoji,
      ...(remove ? { remove: true } : {}),
    });
  }

  updateConversation(conversationId: string, changes: Record<string, unknown>): Promise<Conversation> {
    return this.request<Conversation>(Ev.CONVERSATION_UPDATE, { conversationId, ...changes });
  }

  deleteConversation(conversationId: string): Promise<Conversation> {
    return this.request<Conversation>(Ev.CONVERSATION_DELETE, { conversationId });
  }

  /** conversation:read: everything up to `seq` is read (the cursor never moves back). */
  markRead(conversationId: string, seq: number): Promise<ReadReply> {
    return this.request<ReadReply>(Ev.CONVERSATION_READ, { conversationId, seq });
  }

  stop(conversationId: string): Promise<unknown> {
    return this.request(Ev.MESSAGE_STOP, { conversationId });
  }

  // ---------------------------------------------------------------- HTTP

  async http<T>(path: string): Promise<T> {
    const res = await this.opts.fetchImpl(new URL(path, this.currentBase).toString(), {
      headers: { Authorization: `Bearer ${this.opts.token}`, Accept: 'application/json' },
    });
    let body: unknown = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok) {
      const err = (body as { error?: ErrorBody } | null)?.error;
      throw new ParleyError(
        err?.code ?? `HTTP_${res.status}`,
        err?.message ?? `${res.status} ${res.statusText}`,
        err?.details,
      );
    }
    // Accept both a bare payload and the design doc's success envelope.
    if (body && typeof body === 'object' && 'success' in body && 'data' in body)
      return (body as { data: T }).data;
    return body as T;
  }

  async listConversations(limit = 50): Promise<Conversation[]> {
    const body = await this.http<unknown>(`/v1/conversations?limit=${limit}`);
    return pickList<Conversation>(body, ['items', 'conversations', 'data', 'results']);
  }

  /** The agents the system serves; a 404 (older gateway) is an empty list. */
  async listAgents(): Promise<AgentInfo[]> {
    const body = await this.http<unknown>('/v1/agents');
    return pickList<AgentInfo>(body, ['items', 'agents', 'data', 'results']).filter(
      (a) => a && typeof a.id === 'string',
    );
  }

  getConversation(conversationId: string): Promise<Conversation> {
    return this.http<Conversation>(`/v1/conversations/${encodeURIComponent(conversationId)}`);
  }

  /** A page of history by seq, in ascending seq order; `hasMore`: older (or, with afterSeq, newer) exist. */
  async messages(
    conversationId: string,
    opts: { beforeSeq?: number; afterSeq?: number; limit?: number } = {},
  ): Promise<MessagePage> {
    const q = new URLSearchParams();
    if (opts.beforeSeq != null) q.set('beforeSeq', String(opts.beforeSeq));
    if (opts.afterSeq != null) q.set('afterSeq', String(opts.afterSeq));
    const limit = opts.limit ?? 50;
    q.set('limit', String(limit));
    const body = await this.http<unknown>(
      `/v1/conversations/${encodeURIComponent(conversationId)}/messages?${q.toString()}`,
    );
    const list = pickList<Message>(body, ['items', 'messages', 'data', 'results']);
    const more = (body as { hasMore?: unknown } | null)?.hasMore;
    return {
      items: [...list].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0)),
      hasMore: typeof more === 'boolean' ? more : list.length >= limit,
    };
  }
}

export interface MessagePage {
  items: Message[];
  hasMore: boolean;
}

function pickList<T>(body: unknown, keys: string[]): T[] {
  if (Array.isArray(body)) return body as T[];
  if (body && typeof body === 'object') {
    for (const k of keys) {
      const v = (body as Record<string, unknown>)[k];
      if (Array.isArray(v)) return v as T[];
    }
  }
  return [];
}

/** Who a typing / presence / agent-status event is about (field names vary by event). */
export function actorOf(data: unknown): string | null {
  if (!data || typeof data !== 'object') return null;
  const d = data as Record<string, unknown>;
  for (const k of ['principalId', 'userId', 'agentId', 'id', 'sub', 'createdBy']) {
    const v = d[k];
    if (typeof v === 'string' && v) return v;
  }
  const p = d.principal;
  if (p && typeof p === 'object' && typeof (p as PrincipalInfo).id === 'string')
    return (p as PrincipalInfo).id;
  return null;
}
