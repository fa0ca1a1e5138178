"""Attachment records (issue 17): the conversation service is their only writer.

A gateway stores the bytes (parley_contract.filestore) and asks here, over NATS, whether the
caller may upload (``check``) and then to record the upload (:meth:`Attachments.register`).
``message:send`` names attachments by id; :meth:`Attachments.resolve` turns the ids into the
seed's attachment objects and binds the records to the message. Downloads ask
:meth:`Attachments.get` first: reachable while a live message of a live conversation carries
the attachment (or, before any does, by its uploader), for participants — or for anyone
holding a signed URL (the gateway asks as the service then).

The protocol flow is in docs/protocol.md (section 7, "Attachments") and
parley_contract.attachments.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from parley_contract import attachments as att
from parley_contract import commands, jsonutil
from parley_contract.attachments import AttachmentRecord, AttachmentRef, Uploader
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Attachment, Conversation
from parley_conversation import roles
from parley_conversation.domain import now_ms

logger = logging.getLogger(__name__)

_BARE_URL = f'"url":"{att.URL_PREFIX}'.encode()
ConversationOf = Callable[[Principal, str], Awaitable[Conversation]]


def _not_found(attachment_id: str) -> ParleyError:
    return ParleyError(ErrorCode.NOT_FOUND, "no such attachment", {"attachmentId": attachment_id})


class Attachments:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        conversation_of: ConversationOf,
        *,
        url_ttl_seconds: float,
    ) -> None:
        self.collection = collection
        self._conversation = conversation_of  # authorized (ParleyError otherwise)
        self.secret = ""  # the deployment's URL signing key, once init() ran
        self.ttl = url_ttl_seconds

    async def init(self) -> None:
        await self.collection.create_index([("conversationId", ASCENDING)])
        keys = self.collection.database[att.KEYS_COLLECTION]
        secret = await att.signing_key(keys, create=True)
        if secret is None:
            raise RuntimeError("no attachment URL signing key in the store")
        self.secret = secret

    # ------------------------------------------------------------ gateway requests

    async def register(self, p: Principal, data: dict[str, Any]) -> Any:
        req = _parse(att.RegisterRequest, data)
        conv = await self._conversation(p, req.conversation_id)
        roles.require(roles.role_of(conv, p), roles.Action.POST)
        if req.check:
            return {"conversationId": conv.id, "mayUpload": True}
        if not (req.attachment_id and req.filename and req.mime_type and req.size is not None):
            raise ParleyError(
                ErrorCode.VALIDATION_ERROR,
                "attachmentId, filename, mimeType and size are required",
            )
        record = AttachmentRecord(
            id=req.attachment_id,
            conversation_id=conv.id,
            filename=req.filename,
            mime_type=req.mime_type,
            size=req.size,
            uploaded_by=Uploader(id=p.id, kind=p.kind),
            created_at=now_ms(),
        )
        try:
            await self.collection.insert_one(record.model_dump(by_alias=True))
        except DuplicateKeyError:
            raise ParleyError(ErrorCode.CONFLICT, "attachment id already taken") from None
        return record.wire(self.secret, self.ttl)

    async def get(self, p: Principal, data: dict[str, Any]) -> Any:
        """The record (wire shape plus ``conversationId``) if ``p`` may read the bytes."""
        req = _parse(att.GetRequest, data)
        record = await self._record(req.attachment_id)
        if record is None or record.deleted_at is not None:
            raise _not_found(req.attachment_id)
        conv = await self._conversation(p, record.conversation_id)
        if conv.deleted_at is not None:  # services pass authorize for a deleted one
            raise _not_found(req.attachment_id)
        if not record.message_ids and not _is_uploader(record, p):
            raise _not_found(req.attachment_id)  # not shown to anyone yet
        return {**record.wire(self.secret, self.ttl), "conversationId": record.conversation_id}

    # ------------------------------------------------------------ message:send

    async def resolve(
        self, p: Principal, conversation_id: str, refs: list[AttachmentRef]
    ) -> list[Attachment]:
        """The stored attachments of a message about to be stored (:meth:`bind` after).

        Each id must name an upload to this conversation that is still reachable; one no
        message carries yet may only be sent by its uploader. NOT_FOUND (revealing nothing
        of other conversations) otherwise, with the field's index.
        """
        ids = list(dict.fromkeys(r.id for r in refs))
        found: dict[str, AttachmentRecord] = {}
        async for doc in self.collection.find({"_id": {"$in": ids}}):
            record = AttachmentRecord.model_validate(doc)
            found[record.id] = record
        for i, aid in enumerate(ids):
            rec = found.get(aid)
            usable = (
                rec is not None
                and rec.deleted_at is None
                and rec.conversation_id == conversation_id
                and (bool(rec.message_ids) or _is_uploader(rec, p))
            )
            if not usable:
                raise ParleyError(
                    ErrorCode.NOT_FOUND,
                    f"attachments.{i}: no such attachment in this conversation (upload it "
                    "with POST /v1/conversations/{id}/attachments first)",
                    {"field": f"attachments.{i}.id", "attachmentId": aid},
                )
        return [att.stored_attachment(found[aid]) for aid in ids]

    async def bind(self, attachments: list[Any], message_id: str) -> None:
        """The stored message ``message_id`` carries these (wire dicts): readable by the
        conversation's participants until it is deleted. After the store, with the stored
        message's id: a retried send (a new id each run) binds the first run's message, so
        deleting it leaves nothing bound. A replica dying between the two leaves the file
        its uploader's only until the message is sent again (the retry binds it)."""
        ids = [a["id"] for a in attachments if isinstance(a, dict) and isinstance(a.get("id"), str)]
        if ids:
            await self.collection.update_many(
                {"_id": {"$in": ids}, "deletedAt": None}, {"$addToSet": {"messageIds": message_id}}
            )

    # ------------------------------------------------------------ deletions

    async def message_deleted(self, message_id: str, attachments: list[Attachment]) -> None:
        """A deleted message no longer carries its files; one nothing carries is gone."""
        ids = [a.id for a in attachments]
        if not ids:
            return
        await self.collection.update_many(
            {"_id": {"$in": ids}}, {"$pull": {"messageIds": message_id}}
        )
        await self.collection.update_many(
            {"_id": {"$in": ids}, "messageIds": [], "deletedAt": None},
            {"$set": {"deletedAt": now_ms()}},
        )

    async def conversation_deleted(self, conversation_id: str) -> None:
        await self.collection.update_many(
            {"conversationId": conversation_id, "deletedAt": None},
            {"$set": {"deletedAt": now_ms()}},
        )

    # ------------------------------------------------------------ signing

    def sign(self, doc: Any) -> Any:
        """A wire message with fresh signed urls (stored: bare paths)."""
        if not self.secret:
            return doc
        return att.sign_message(doc, self.secret, self.ttl)

    def sign_frame(self, frame: Any) -> Any:
        """A durable frame whose data is a message (message:new/updated...): signed."""
        if isinstance(frame, dict) and isinstance(frame.get("data"), dict):
            data = frame["data"]
            signed = self.sign(data)
            if signed is not data:
                return {**frame, "data": signed}
        return frame

    def sign_payload(self, payload: bytes) -> bytes:
        """A frame on its way to NATS with its attachments' urls signed (stored bare)."""
        if _BARE_URL not in payload:
            return payload
        try:
            frame = jsonutil.loads(payload)
        except ValueError:
            return payload
        signed = self.sign_frame(frame)
        return payload if signed is frame else jsonutil.dumps(signed)

    async def _record(self, attachment_id: str) -> AttachmentRecord | None:
        doc = await self.collection.find_one({"_id": attachment_id})
        return None if doc is None else AttachmentRecord.model_validate(doc)


def _is_uploader(record: AttachmentRecord, p: Principal) -> bool:
    if p.kind is PrincipalKind.SERVICE:
        return True  # a signed URL (the gateway asks as the service) or a service itself
    return record.uploaded_by.id == p.id and record.uploaded_by.kind is p.kind


def _parse(model: type[att.RegisterRequest] | type[att.GetRequest], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise commands.validation_error(exc) from None
