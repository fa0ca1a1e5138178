/**
 * GENERATED from libs/contract (python -m parley_contract.wire_schema, then
 * json-schema-to-typescript via web/scripts/contract.mjs): do not edit; run `make generate`.
 * src/generated.test.ts fails when this file and the contract drift apart.
 */

/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationStatus".
 */
export type ConversationStatus = 'active' | 'archived' | 'closed';
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ParticipantRole".
 */
export type ParticipantRole = 'user' | 'agent' | 'observer';
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Role".
 */
export type Role = 'user' | 'assistant' | 'system' | 'tool';
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageStatus".
 */
export type MessageStatus = 'sending' | 'sent' | 'delivered' | 'failed';
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageType".
 */
export type MessageType = 'text' | 'thinking' | 'tool_call' | 'tool_result' | 'error' | 'system';
/**
 * Who stands behind a connection or a request.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "PrincipalKind".
 */
export type PrincipalKind = 'user' | 'agent' | 'service';
/**
 * Who wrote a conversation's title (``Conversation.titleSource``).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "TitleSource".
 */
export type TitleSource = 'user' | 'agent';

/**
 * Parley's client contract (docs/protocol.md), generated from libs/contract by python -m parley_contract.wire_schema. Do not edit.
 */
export interface ParleyContract {
  event?: Event;
  errorCode?: ErrorCode;
  commands?: CommandPayloads;
  events?: EventData;
  replies?: CommandReplies;
  command?: ClientCommand;
  frame?: ServerFrame;
  error?: ErrorBody;
}
/**
 * The data of each client → server command.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "CommandPayloads".
 */
export interface CommandPayloads {
  'conversation:create': ConversationCreate;
  'conversation:join': ConversationJoin;
  'conversation:leave': ConversationLeave;
  'conversation:update': ConversationUpdate;
  'conversation:delete': ConversationDelete;
  'message:send': MessageSend;
  'message:edit': MessageEdit;
  'message:delete': MessageDelete;
  'message:react': MessageReact;
  'message:stop': MessageStop;
  'typing:start': Typing;
  'typing:stop': Typing;
  'presence:online': Presence;
  'presence:offline': Presence;
  'tool:call': ToolCallCommand;
  'task:create': TaskCreate;
  'conversation:read': ConversationRead;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationCreate".
 */
export interface ConversationCreate {
  conversationId?: string | null;
  title?: string;
  description?: string;
  agentId?: string | null;
  modelId?: string | null;
  conversationType?: string;
  status?: ConversationStatus;
  /**
   * @maxItems 500
   */
  participants?: ParticipantRef[];
  /**
   * @maxItems 50
   */
  tags?: string[];
  context?: ConversationContext | null;
}
/**
 * A participant as the seed's Conversation writes it, ``{userId | agentId, role}``
 * (``joinedAt``/``leftAt`` are the server's), or Parley's older ``{id, kind, role}``.
 * A bare id (a string) is the shorthand for ``{userId: id}``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ParticipantRef".
 */
export interface ParticipantRef {
  userId?: string | null;
  agentId?: string | null;
  id?: string | null;
  kind?: string | null;
  role?: ParticipantRole | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationContext".
 */
export interface ConversationContext {
  summary?: string | null;
  entities?: string[] | null;
  topics?: string[] | null;
  sentiment?: string | null;
  messageCount?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationJoin".
 */
export interface ConversationJoin {
  conversationId: string;
  sinceSeq?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationLeave".
 */
export interface ConversationLeave {
  conversationId: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationUpdate".
 */
export interface ConversationUpdate {
  conversationId: string;
  title?: string | null;
  description?: string | null;
  status?: ConversationStatus | null;
  tags?: string[] | null;
  agentId?: string | null;
  modelId?: string | null;
  context?: ConversationContext | null;
  participants?: ParticipantRef[] | null;
  addParticipants?: ParticipantRef[] | null;
  removeParticipants?: ParticipantRef[] | null;
  usage?: Usage | null;
  cost?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Usage".
 */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationDelete".
 */
export interface ConversationDelete {
  conversationId: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageSend".
 */
export interface MessageSend {
  conversationId: string;
  content?: string;
  clientMessageId?: string | null;
  role?: Role | null;
  agentId?: string | null;
  messageStatus?: MessageStatus | null;
  messageType?: MessageType;
  name?: string | null;
  parentMessageId?: string | null;
  toolCalls?: ToolCall[] | null;
  toolResults?: ToolResult[] | null;
  thinking?: Thinking | null;
  usage?: Usage | null;
  latency?: number | null;
  error?: string | null;
  attachments?: AttachmentRef[] | null;
  metadata?: {
    [k: string]: unknown;
  } | null;
  finishReason?: string | null;
  cost?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ToolCall".
 */
export interface ToolCall {
  id: string;
  type?: string;
  function: ToolFunction;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ToolFunction".
 */
export interface ToolFunction {
  name: string;
  arguments: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ToolResult".
 */
export interface ToolResult {
  toolCallId: string;
  toolName: string;
  result?: unknown;
  success: boolean;
  error?: string | null;
  executionTime?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Thinking".
 */
export interface Thinking {
  content: string;
  visible?: boolean;
  duration?: number;
}
/**
 * An entry of ``message:send``'s ``attachments``: an uploaded attachment, by id.
 *
 * The seed's whole object is accepted too (a client echoing what it got back from the
 * upload); only ``id`` is read, the rest comes from the stored record. A bare string is
 * the id.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "AttachmentRef".
 */
export interface AttachmentRef {
  id: string;
  filename?: string | null;
  mimeType?: string | null;
  size?: number | null;
  url?: string | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageEdit".
 */
export interface MessageEdit {
  conversationId: string;
  messageId: string;
  content: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageDelete".
 */
export interface MessageDelete {
  conversationId: string;
  messageId: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageReact".
 */
export interface MessageReact {
  conversationId: string;
  messageId: string;
  emoji: string;
  remove?: boolean;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MessageStop".
 */
export interface MessageStop {
  conversationId: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Typing".
 */
export interface Typing {
  conversationId: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Presence".
 */
export interface Presence {
  status?: string | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ToolCallCommand".
 */
export interface ToolCallCommand {
  conversationId?: string | null;
  toolName: string;
  arguments?: {
    [k: string]: unknown;
  };
  agentId?: string | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "TaskCreate".
 */
export interface TaskCreate {
  conversationId: string;
  title: string;
  description?: string;
  agentId?: string | null;
}
/**
 * Read up to ``seq`` (a durable event's seq, at most the conversation's last).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationRead".
 */
export interface ConversationRead {
  conversationId: string;
  seq: number;
}
/**
 * The data of each server → client event.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "EventData".
 */
export interface EventData {
  'typing:start': TypingData;
  'typing:stop': TypingData;
  'presence:online': PresenceData;
  'presence:offline': PresenceData;
  'conversation:read': ReadData;
  connected: ConnectedData;
  reconnected: ConnectedData;
  error: null;
  'conversation:created': Conversation;
  'conversation:joined': ConversationJoinedData;
  'conversation:updated': Conversation;
  'conversation:deleted': Conversation;
  'message:new': Message;
  'message:updated': Message;
  'message:deleted': Message;
  'message:reacted': Message;
  'agent:thinking': AgentThinking;
  'agent:tool-calling': AgentToolCalling;
  'agent:online': AgentPresence | PresenceData;
  'agent:offline': AgentPresence | PresenceData;
  'message:stream-start': StreamStart;
  'message:stream-delta': StreamDelta;
  'message:stream-end': StreamEnd;
  'task:created': Task;
  'tool:result': null;
  'message:delivered': DeliveredData;
  'conversation:activity': ActivityData;
}
/**
 * ``typing:start`` / ``typing:stop`` from another connection.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "TypingData".
 */
export interface TypingData {
  conversationId: string;
  principalId: string;
  kind: PrincipalKind;
  name?: string | null;
  [k: string]: unknown;
}
/**
 * ``presence:online`` / ``presence:offline`` (and ``agent:*`` from a gateway).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "PresenceData".
 */
export interface PresenceData {
  conversationId: string;
  principalId: string;
  kind: PrincipalKind;
  name?: string | null;
  status?: string | null;
  reason?: string | null;
  [k: string]: unknown;
}
/**
 * ``conversation:read``: read cursors that moved (coalesced per conversation). To the
 * reader's own connections also its ``unreadCount``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ReadData".
 */
export interface ReadData {
  conversationId: string;
  cursors: Cursor[];
  unreadCount?: number | null;
  [k: string]: unknown;
}
/**
 * A read or delivery cursor that moved: ``(kind, principalId)`` is at ``seq``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Cursor".
 */
export interface Cursor {
  principalId: string;
  kind: PrincipalKind;
  seq: number;
  [k: string]: unknown;
}
/**
 * ``connected`` / ``reconnected``: the session (section 1).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConnectedData".
 */
export interface ConnectedData {
  sessionId: string;
  principal: Principal;
  instanceId: string;
  heartbeatSeconds: number;
  sessionTtlSeconds: number;
  limits?: {
    [k: string]: number;
  };
  conversations?: ResumedConversation[] | null;
  degraded?: string[] | null;
  [k: string]: unknown;
}
/**
 * Who acts: from a verified JWT (users, agents) or a service's own identity.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Principal".
 */
export interface Principal {
  id: string;
  kind: PrincipalKind;
  name?: string | null;
}
/**
 * One conversation a ``reconnected`` session restored, and the seq it resumed after.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ResumedConversation".
 */
export interface ResumedConversation {
  conversationId: string;
  lastSeq: number;
  [k: string]: unknown;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Conversation".
 */
export interface Conversation {
  createdBy?: string | null;
  updatedBy?: string | null;
  createdAt?: string | null;
  updatedAt?: string | null;
  isActive?: boolean;
  _id: string;
  conversationId: string;
  title: string;
  description?: string;
  agentId?: string | null;
  modelId?: string | null;
  conversationType?: string;
  status?: ConversationStatus;
  totalTokens?: number;
  totalMessages?: number;
  totalCost?: number;
  participants?: Participant[];
  lastMessage?: LastMessage | null;
  tags?: string[];
  context?: ConversationContext | null;
  lastSeq?: number;
  deletedAt?: string | null;
  titleSource?: TitleSource | null;
  unreadCount?: number | null;
  readSeq?: number | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Participant".
 */
export interface Participant {
  userId?: string | null;
  agentId?: string | null;
  role: ParticipantRole;
  joinedAt: string;
  leftAt?: string | null;
  name?: string | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "LastMessage".
 */
export interface LastMessage {
  content: string;
  role: string;
  createdAt: string;
  messageId?: string | null;
  messageType?: string | null;
  seq?: number | null;
}
/**
 * ``conversation:joined`` (event and the join's reply): where the stream starts.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ConversationJoinedData".
 */
export interface ConversationJoinedData {
  conversation?: Conversation | null;
  lastSeq: number;
  sinceSeq?: number | null;
  epoch?: number;
  deliveredSeq?: number | null;
  unreadCount?: number | null;
  readSeq?: number | null;
  cursors?: MemberCursor[] | null;
  [k: string]: unknown;
}
/**
 * How far one member has read a conversation (docs/protocol.md 3.6).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "MemberCursor".
 */
export interface MemberCursor {
  principalId: string;
  kind: PrincipalKind;
  readSeq?: number;
  [k: string]: unknown;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Message".
 */
export interface Message {
  createdBy?: string | null;
  updatedBy?: string | null;
  createdAt?: string | null;
  updatedAt?: string | null;
  isActive?: boolean;
  _id: string;
  conversationId: string;
  agentId?: string | null;
  role: Role;
  content: string;
  messageType?: MessageType;
  name?: string | null;
  parentMessageId?: string | null;
  toolCalls?: ToolCall[] | null;
  toolResults?: ToolResult[] | null;
  thinking?: Thinking | null;
  usage?: Usage | null;
  latency?: number | null;
  error?: string | null;
  messageStatus?: MessageStatus | null;
  attachments?: Attachment[] | null;
  metadata?: {
    [k: string]: unknown;
  } | null;
  seq?: number | null;
  clientMessageId?: string | null;
  reactions?: {
    [k: string]: string[];
  } | null;
  cost?: number | null;
  finishReason?: string | null;
  editedAt?: string | null;
  deletedAt?: string | null;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Attachment".
 */
export interface Attachment {
  id: string;
  filename: string;
  mimeType: string;
  size: number;
  url: string;
}
/**
 * ``agent:thinking``: the agent started working on a user message.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "AgentThinking".
 */
export interface AgentThinking {
  conversationId: string;
  agentId: string;
  agentName?: string | null;
  parentMessageId?: string | null;
  status?: string;
}
/**
 * ``agent:tool-calling``: the agent is running a tool now.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "AgentToolCalling".
 */
export interface AgentToolCalling {
  conversationId: string;
  agentId: string;
  toolCallId: string;
  toolName: string;
  arguments: string;
  parentMessageId?: string | null;
}
/**
 * ``agent:online`` / ``agent:offline``: whether an agent can answer.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "AgentPresence".
 */
export interface AgentPresence {
  agentId: string;
  name?: string | null;
  instanceId?: string | null;
  conversationId?: string | null;
}
/**
 * ``message:stream-start``: an agent answer starts streaming.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "StreamStart".
 */
export interface StreamStart {
  streamId: string;
  conversationId: string;
  agentId: string;
  parentMessageId?: string | null;
}
/**
 * ``message:stream-delta``: the next chunk; ``index`` counts from 0 without gaps.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "StreamDelta".
 */
export interface StreamDelta {
  streamId: string;
  delta: string;
  index: number;
  snapshot?: boolean | null;
}
/**
 * ``message:stream-end``: no more deltas; ``message:new`` with ``messageId`` follows
 * (or preceded, when the store answered first). finishReason: 'stop' | 'tool_calls' |
 * 'aborted' | 'error' | 'length'.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "StreamEnd".
 */
export interface StreamEnd {
  streamId: string;
  finishReason: string;
  messageId?: string | null;
}
/**
 * ``task:created`` and the reply to ``task:create``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Task".
 */
export interface Task {
  _id: string;
  conversationId: string;
  title: string;
  description?: string;
  agentId?: string | null;
  status?: string;
  createdBy?: string | null;
  createdAt?: string | null;
  updatedAt?: string | null;
  [k: string]: unknown;
}
/**
 * ``message:delivered``: principals whose reception delivered messages (coalesced).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "DeliveredData".
 */
export interface DeliveredData {
  conversationId: string;
  cursors: Cursor[];
  [k: string]: unknown;
}
/**
 * ``conversation:activity``: new messages in one of the principal's conversations.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ActivityData".
 */
export interface ActivityData {
  conversationId: string;
  lastSeq: number;
  lastMessage: ActivityMessage;
  [k: string]: unknown;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ActivityMessage".
 */
export interface ActivityMessage {
  messageId: string;
  role: string;
  messageType: string;
  content: string;
  createdBy?: string | null;
  seq: number;
  [k: string]: unknown;
}
/**
 * The reply data of the commands that answer with one.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "CommandReplies".
 */
export interface CommandReplies {
  'conversation:create': Conversation;
  'conversation:join': ConversationJoinedData;
  'conversation:leave': LeaveReply;
  'conversation:update': Conversation;
  'conversation:delete': Conversation;
  'message:send': Message;
  'message:edit': Message;
  'message:delete': Message;
  'message:react': Message;
  'message:stop': StopReply;
  'presence:online': PresenceReply;
  'presence:offline': PresenceReply;
  'tool:call': ToolCallReply;
  'task:create': Task;
  'conversation:read': ReadReply;
}
/**
 * The reply to ``conversation:leave``: this connection stopped watching.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "LeaveReply".
 */
export interface LeaveReply {
  conversationId: string;
  watching?: boolean;
  [k: string]: unknown;
}
/**
 * The reply to ``message:stop``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "StopReply".
 */
export interface StopReply {
  stopping: boolean;
  [k: string]: unknown;
}
/**
 * The reply to ``presence:online`` / ``presence:offline``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "PresenceReply".
 */
export interface PresenceReply {
  conversations: number;
  [k: string]: unknown;
}
/**
 * The reply to ``tool:call``.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ToolCallReply".
 */
export interface ToolCallReply {
  toolName: string;
  result?: unknown;
  success: boolean;
  error?: string | null;
  executionTime?: number | null;
  [k: string]: unknown;
}
/**
 * The reply to ``conversation:read``: where the cursor is and what is still unread.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ReadReply".
 */
export interface ReadReply {
  conversationId: string;
  seq: number;
  unreadCount: number;
  [k: string]: unknown;
}
/**
 * A client → server frame.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ClientCommand".
 */
export interface ClientCommand {
  event: string;
  id?: string | number | null;
  data?: {
    [k: string]: unknown;
  };
}
/**
 * A server → client frame: a reply (with ``id``) or an event.
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ServerFrame".
 */
export interface ServerFrame {
  event: string;
  id?: string | number | null;
  success: boolean;
  data?: unknown;
  error?: ErrorBody | null;
  conversationId?: string | null;
  seq?: number | null;
  epoch?: number | null;
  timestamp: string;
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ErrorBody".
 */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: {
    [k: string]: unknown;
  } | null;
}

/**
 * Every event name (parley_contract.events.Event).
 *
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "Event".
 */
export enum Event {
  CONVERSATION_CREATE = 'conversation:create',
  CONVERSATION_JOIN = 'conversation:join',
  CONVERSATION_LEAVE = 'conversation:leave',
  CONVERSATION_UPDATE = 'conversation:update',
  CONVERSATION_DELETE = 'conversation:delete',
  MESSAGE_SEND = 'message:send',
  MESSAGE_EDIT = 'message:edit',
  MESSAGE_DELETE = 'message:delete',
  MESSAGE_REACT = 'message:react',
  MESSAGE_STOP = 'message:stop',
  TYPING_START = 'typing:start',
  TYPING_STOP = 'typing:stop',
  PRESENCE_ONLINE = 'presence:online',
  PRESENCE_OFFLINE = 'presence:offline',
  TOOL_CALL = 'tool:call',
  TASK_CREATE = 'task:create',
  CONVERSATION_READ = 'conversation:read',
  CONNECTED = 'connected',
  RECONNECTED = 'reconnected',
  ERROR = 'error',
  CONVERSATION_CREATED = 'conversation:created',
  CONVERSATION_JOINED = 'conversation:joined',
  CONVERSATION_UPDATED = 'conversation:updated',
  CONVERSATION_DELETED = 'conversation:deleted',
  MESSAGE_NEW = 'message:new',
  MESSAGE_UPDATED = 'message:updated',
  MESSAGE_DELETED = 'message:deleted',
  MESSAGE_REACTED = 'message:reacted',
  AGENT_THINKING = 'agent:thinking',
  AGENT_TOOL_CALLING = 'agent:tool-calling',
  AGENT_ONLINE = 'agent:online',
  AGENT_OFFLINE = 'agent:offline',
  MESSAGE_STREAM_START = 'message:stream-start',
  MESSAGE_STREAM_DELTA = 'message:stream-delta',
  MESSAGE_STREAM_END = 'message:stream-end',
  TASK_CREATED = 'task:created',
  TOOL_RESULT = 'tool:result',
  MESSAGE_DELIVERED = 'message:delivered',
  CONVERSATION_ACTIVITY = 'conversation:activity'
}
/**
 * This interface was referenced by `ParleyContract`'s JSON-Schema
 * via the `definition` "ErrorCode".
 */
export enum ErrorCode {
  VALIDATION_ERROR = 'VALIDATION_ERROR',
  UNAUTHORIZED = 'UNAUTHORIZED',
  FORBIDDEN = 'FORBIDDEN',
  NOT_FOUND = 'NOT_FOUND',
  CONFLICT = 'CONFLICT',
  UNKNOWN_EVENT = 'UNKNOWN_EVENT',
  PAYLOAD_TOO_LARGE = 'PAYLOAD_TOO_LARGE',
  RATE_LIMITED = 'RATE_LIMITED',
  SERVICE_UNAVAILABLE = 'SERVICE_UNAVAILABLE',
  TIMEOUT = 'TIMEOUT',
  INTERNAL_ERROR = 'INTERNAL_ERROR'
}
