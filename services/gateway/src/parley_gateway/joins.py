"""A gateway's own conversation:join, wrapped around the service's authorization: subscribe,
announce ``conversation:joined``, replay seq > since, presence; and the rejoin of a resumed or
moved connection's conversations. Part of :class:`parley_gateway.commands.Commands` (which
inherits it; the gateway inherits that).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from parley_contract import envelopes
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.routes import ROUTES
from parley_gateway.conn import Conn
from parley_gateway.hub import Hub
from parley_gateway.settings import Settings

_RECEIPT_KEYS = ("unreadCount", "readSeq", "cursors")


class Joins:
    """Joining conversations: the join command's work and the rejoins of a resume or move."""

    settings: Settings
    hub: Hub

    async def rejoin(
        self,
        conn: Conn,
        joined: dict[str, int],
        *,
        quiet: bool = False,
        carried: Collection[str] = (),
    ) -> None:
        """Join again each conversation a resumed or moved connection had, from its seq;
        a conversation that refuses is one ``error`` frame naming it, not the end of it.

        ``carried``: conversations whose members never got this principal's offline (its
        previous connection was kicked, or vanished with its gateway unreaped): no
        ``presence:online`` when it is back, and ``presence:offline`` when it is not."""
        for cid, seq in joined.items():
            carry = cid in carried
            try:
                env = await self.join(conn, cid, seq, quiet=quiet, batched=True, carried=carry)
            except ParleyError as exc:
                env = envelopes.fail_from(exc)
            if not env["success"]:
                if carry and not quiet:
                    await self._gone_from(conn, cid)
                details = dict(env["error"].get("details") or {})
                details["conversationId"] = cid
                conn.send(
                    envelopes.error_frame(
                        ErrorCode(env["error"]["code"]), env["error"]["message"], details
                    )
                )

    async def _gone_from(self, conn: Conn, cid: str) -> None:
        """A carried conversation that was not rejoined: its members saw the principal
        online all along; tell them it is not (unless another connection of it here is)."""
        key = (conn.principal.kind, conn.principal.id)
        conv = self.hub.convs.get(cid)
        if conv is None or not any((m.principal.kind, m.principal.id) == key for m in conv.members):
            await self.hub.publish_presence(conn, cid, online=False)

    async def join(
        self,
        conn: Conn,
        cid: str,
        since: int | None,
        *,
        quiet: bool = False,
        batched: bool = False,
        carried: bool = False,
    ) -> dict[str, Any]:
        """conversation:join — authorize, subscribe, replay seq > since, then live events.

        ``quiet``: no ``conversation:joined`` and no presence (a connection moving to this
        gateway with its conversations, see parley_gateway.sio.relay). ``batched``: asked
        together with the other rejoins of this conversation (parley_gateway.rejoins), the
        same answer as a join of its own. ``carried``: no ``presence:online`` (a resume whose
        previous connection's members never saw it go offline, sessions.Restored).
        """
        hub = self.hub
        if cid not in conn.joined and len(conn.joined) >= self.settings.max_conversations:
            raise ParleyError(
                ErrorCode.RATE_LIMITED,
                f"at most {self.settings.max_conversations} conversations per connection",
                {"limit": self.settings.max_conversations},
            )
        was_member = cid in conn.joined
        conv = await hub.acquire(cid)  # subscribe before asking where the conversation stands
        if was_member:  # a re-join replays from sinceSeq again; the subscription stays
            await hub.leave(conn, cid, announce=False)
        joined = False
        try:
            if batched:
                envelope = await hub.rejoins.authorize(cid, conn.principal)
            else:
                body = hub.command_body(conn.principal, {"conversationId": cid})
                envelope = await hub.request(ROUTES[Event.CONVERSATION_JOIN].subject, body)
            if not envelope["success"]:
                return envelope
            info = envelope.get("data") or {}
            last_seq = info.get("lastSeq")
            if not isinstance(last_seq, int):
                last_seq = 0
            epoch = info.get("epoch")
            if not isinstance(epoch, int):
                epoch = 0
            if not quiet:
                conn.send(
                    envelopes.event_frame(
                        Event.CONVERSATION_JOINED,
                        {
                            "conversation": info.get("conversation"),
                            "lastSeq": last_seq,
                            "sinceSeq": since,
                            "epoch": epoch,
                            # Receipts (docs/protocol.md 3.6): the caller's unread count and
                            # read seq, the members' read cursors.
                            **{k: info[k] for k in _RECEIPT_KEYS if k in info},
                        },
                        conversation_id=cid,
                        epoch=epoch,
                    )
                )
            if not await hub.join(conn, cid, since, last_seq, epoch):
                return envelopes.fail(
                    ErrorCode.FORBIDDEN, "you are no longer a participant of this conversation"
                )
            joined = True
            key = (conn.principal.kind, conn.principal.id)
            if (
                not quiet
                and not carried
                and not was_member
                and not any(
                    m is not conn and (m.principal.kind, m.principal.id) == key
                    for m in conv.members
                )
            ):
                await hub.publish_presence(conn, cid, online=True)
            return envelopes.ok(
                {
                    "conversation": info.get("conversation"),
                    "lastSeq": last_seq,
                    "sinceSeq": since,
                    "epoch": epoch,
                    "deliveredSeq": conn.joined.get(cid, last_seq),
                }
            )
        finally:
            if not joined:
                await hub.release(conv)
