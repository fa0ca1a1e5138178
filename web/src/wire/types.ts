/**
 * What the wire carries, as the web UI types it: the contract's types, event names and error
 * codes (generated from `libs/contract`, src/generated/contract.ts, and re-exported), and the
 * client's own types beside them (its options, states, errors and the HTTP reads' shapes).
 * No behaviour here but `ParleyError` and `actorOf`.
 */

// Names, schemas and frames are generated from libs/contract (src/generated/contract.ts,
// `make generate`); a test fails when they drift from the Python models.
import { Event } from '../generated/contract';
import type {
  ConnectedData as GeneratedConnectedData,
  ErrorBody as GeneratedErrorBody,
  Message,
  Principal,
  ServerFrame as GeneratedServerFrame,
} from '../generated/contract';

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
} from '../generated/contract';
export { ErrorCode, Event } from '../generated/contract';

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

// ------------------------------------------------------------------ the client's own

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

export interface MessagePage {
  items: Message[];
  hasMore: boolean;
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
