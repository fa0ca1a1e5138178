/**
 * `ParleyClient`: the connection (connection.ts) with the protocol's vocabulary on top, the
 * typed commands (docs/protocol.md section 3) and the HTTP `/v1` reads and uploads with the
 * bearer token. Everything here goes through the connection's public surface (`request`,
 * `opts`, `currentBase`): no socket or session state of its own.
 */

import { ParleyConnection } from './connection';
import {
  Ev,
  ParleyError,
  type AgentInfo,
  type Attachment,
  type Conversation,
  type ErrorBody,
  type Message,
  type MessagePage,
  type ReadReply,
} from './types';

export function newClientMessageId(): string {
  const rnd =
    typeof crypto !== 'undefined' && 'randomUUID' in crypto
      ? crypto.randomUUID()
      : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `cm-${rnd}`;
}

export class ParleyClient extends ParleyConnection {
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
