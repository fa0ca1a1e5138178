/** What the user can do: send (with an offline queue and retry), message actions, conversation admin. */
import { useCallback, useMemo } from 'react';
import { Ev, newClientMessageId, type Attachment, type Conversation, type Message } from './protocol';
import type { Parley } from './useParley';
import { upsertConversation } from './views';

export interface NewChat {
  title: string;
  agentId: string | null;
  invite: string[];
}

export function useActions(p: Parley, openId: string | null) {
  const { client, dispatch, setNotice, setConversations, self } = p;

  const fail = useCallback((what: string) => (e: Error) => setNotice(`${what}: ${e.message}`), [setNotice]);

  const deliver = useCallback(
    (local: Message) => {
      if (!client) return;
      const cid = local.conversationId;
      dispatch({ cid, action: { type: 'message', message: { ...local, messageStatus: 'sending' } } });
      client
        .sendMessage(
          cid,
          local.content,
          local.clientMessageId ?? newClientMessageId(),
          local.parentMessageId,
          (local.attachments ?? []).map((a) => a.id),
        )
        .then((stored) => {
          dispatch({ cid, action: { type: 'deleted', messageId: local._id } });
          dispatch({ cid, action: { type: 'message', message: stored } });
        })
        .catch((e: Error) => {
          dispatch({ cid, action: { type: 'message', message: { ...local, messageStatus: 'failed' } } });
          setNotice(`Message not sent: ${e.message}`);
        });
    },
    [client, dispatch, setNotice],
  );

  const send = useCallback(
    (content: string, parentMessageId?: string | null, attachments?: Attachment[]) => {
      if (!openId) return;
      const clientMessageId = newClientMessageId();
      deliver({
        _id: `local:${clientMessageId}`,
        conversationId: openId,
        role: 'user',
        messageType: 'text',
        content,
        clientMessageId,
        parentMessageId: parentMessageId ?? null,
        ...(attachments?.length ? { attachments } : {}),
        messageStatus: 'sending',
        createdBy: self,
        createdAt: new Date().toISOString(),
      });
    },
    [deliver, openId, self],
  );

  const withConv = useCallback(
    (conv: Conversation) => {
      dispatch({ cid: conv.conversationId, action: { type: 'conversation', conversation: conv } });
      setConversations((l) => upsertConversation(l, conv));
    },
    [dispatch, setConversations],
  );

  return useMemo(
    () => ({
      send,
      retry: deliver,
      upload: (cid: string, file: File, onProgress: (sent: number, total: number) => void) => {
        if (!client) {
          return { done: Promise.reject(new Error('not connected')), abort: () => undefined };
        }
        return client.uploadAttachment(cid, file, onProgress);
      },
      edit: (m: Message, content: string) =>
        client?.editMessage(m.conversationId, m._id, content).catch(fail('Cannot edit')),
      remove: (m: Message) => client?.deleteMessage(m.conversationId, m._id).catch(fail('Cannot delete')),
      react: (m: Message, emoji: string, remove: boolean) =>
        client
          ?.react(m.conversationId, m._id, emoji, remove)
          .then((stored) => dispatch({ cid: m.conversationId, action: { type: 'message', message: stored } }))
          .catch(fail('Cannot react')),
      stop: () => {
        if (client && openId) client.stop(openId).catch(fail('Stop failed'));
      },
      typing: (on: boolean) => {
        if (client && openId) client.notify(on ? Ev.TYPING_START : Ev.TYPING_STOP, { conversationId: openId });
      },
      create: async (n: NewChat): Promise<Conversation | null> => {
        if (!client) return null;
        try {
          const conv = await client.createConversation({
            // No title: the server's default, which the agent replaces after the first exchange.
            ...(n.title ? { title: n.title } : {}),
            ...(n.agentId ? { agentId: n.agentId } : {}),
            ...(n.invite.length ? { participants: n.invite } : {}),
          });
          withConv(conv);
          return conv;
        } catch (e) {
          setNotice(`Cannot create: ${(e as Error).message}`);
          return null;
        }
      },
      update: (cid: string, changes: Record<string, unknown>, what: string) =>
        client?.updateConversation(cid, changes).then(withConv).catch(fail(what)),
      deleteConversation: async (cid: string): Promise<boolean> => {
        if (!client) return false;
        try {
          await client.deleteConversation(cid);
          setConversations((l) => l.filter((c) => c.conversationId !== cid));
          return true;
        } catch (e) {
          setNotice(`Cannot delete: ${(e as Error).message}`);
          return false;
        }
      },
    }),
    [client, deliver, dispatch, fail, openId, send, setConversations, setNotice, withConv],
  );
}

export type Actions = ReturnType<typeof useActions>;
