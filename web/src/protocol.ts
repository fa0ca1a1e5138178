/**
 * Parley client protocol (docs/protocol.md) — the one module of the web UI that speaks the
 * wire, and the only one the rest of the UI imports it from. It is split along its seams in
 * src/wire/ (the Python client, libs/client, has the same ones):
 *
 * - types.ts: the contract's types, event names and error codes (generated from
 *   `libs/contract`, src/generated/contract.ts) and the client's own types (`ParleyError`,
 *   `ConnectionState`, `ClientOptions`, `SocketLike`...), plus `actorOf`.
 * - dial.ts: where and when to (re)connect: `wsUrl` with the resume's `session` and exact
 *   `since`, `base64url`, `defaultBackoff`.
 * - ordering.ts: durable events once and in seq order per conversation, epochs honoured.
 * - subscriptions.ts: handlers by event name ('*' for every frame that is not a reply).
 * - connection.ts: `ParleyConnection`, the state machine: WebSocket `/ws?access_token=…`,
 *   request/reply by `id`, resume with `session=<sessionId>` and the joined conversations'
 *   last seqs, retry of idempotent commands (message:send with clientMessageId) after a
 *   reconnect, join/leave.
 * - client.ts: `ParleyClient`, the connection with the typed commands and the HTTP `/v1`
 *   reads and uploads with a bearer token.
 */

export * from './wire/types';
export { base64url, defaultBackoff, wsUrl } from './wire/dial';
export { ParleyConnection } from './wire/connection';
export { newClientMessageId, ParleyClient } from './wire/client';
