"""Attachments (issue 17): what the gateways, the conversation service and the bridge share.

The flow (docs/protocol.md section 7, "Attachments"):

1. ``POST /v1/conversations/{id}/attachments`` on any gateway streams the bytes into the file
   store (:mod:`parley_runtime.filestore`: GridFS in the same MongoDB, or an S3 bucket) under
   a new attachment id, after the conversation service said the caller may write there
   (:data:`subjects.ATTACHMENT_REGISTER` with ``check: true``); then the same request without
   ``check`` stores the attachment's record (:class:`AttachmentRecord`, collection
   ``attachments``), written by the conversation service only.
2. ``message:send`` names attachments by id; the conversation service checks each record
   (same conversation; the uploader's own until a message carries it) and stores the seed's
   shape ``{id, filename, mimeType, size, url}`` in the message, binding the record to it.
3. ``GET /v1/attachments/{id}`` serves the bytes to a participant (bearer token) or to whoever
   holds the short-lived signed URL the message's ``url`` carries (:func:`signed_url`), after
   :data:`subjects.QUERY_ATTACHMENT_GET` said the attachment is still reachable: a deleted
   message unbinds it, a deleted conversation takes all of its files with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from parley_contract.events import PrincipalKind
from parley_contract.ids import SafeId
from parley_contract.models import Attachment

KEYS_COLLECTION = "keys"
KEY_ID = "attachment-urls"
ID_PREFIX = "att"
URL_PREFIX = "/v1/attachments/"
MAX_FILENAME_CHARS = 255
# Images a browser may show inline (no SVG: it can carry script); everything else downloads.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# What uploads may declare, by default (PARLEY_ATTACHMENTS_ALLOWED_TYPES).
DEFAULT_ALLOWED_TYPES = (
    "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/plain,text/markdown,"
    "text/csv,application/json"
)
# The first bytes each inline image type must start with: a PNG label on other bytes is 415.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


class AttachmentRef(BaseModel):
    """An entry of ``message:send``'s ``attachments``: an uploaded attachment, by id.

    The seed's whole object is accepted too (a client echoing what it got back from the
    upload); only ``id`` is read, the rest comes from the stored record. A bare string is
    the id.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    id: SafeId
    filename: str | None = Field(default=None, max_length=MAX_FILENAME_CHARS)
    mime_type: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, ge=0)
    url: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, data: Any) -> Any:
        return {"id": data} if isinstance(data, str) else data


class Uploader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: PrincipalKind


class AttachmentRecord(BaseModel):
    """The stored record of one upload (collection ``attachments``; ``_id`` = the id)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    id: str = Field(alias="_id")
    conversation_id: str
    filename: str
    mime_type: str
    size: int = Field(ge=0)
    uploaded_by: Uploader
    created_at: datetime
    # The messages that carry it; empty until message:send names it (then only its uploader
    # may read it), emptied again when they are deleted (then nobody may).
    message_ids: list[str] = Field(default_factory=list)
    deleted_at: datetime | None = None

    def wire(self, secret: str, ttl_seconds: float, now: float | None = None) -> dict[str, Any]:
        """The seed's attachment shape with a freshly signed url."""
        return {
            "id": self.id,
            "filename": self.filename,
            "mimeType": self.mime_type,
            "size": self.size,
            "url": signed_url(self.id, secret, ttl_seconds, now),
        }


class RegisterRequest(BaseModel):
    """``data`` of :data:`subjects.ATTACHMENT_REGISTER` (gateway → conversation service)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    conversation_id: SafeId
    # check: only "may this principal upload here?" (before any byte is stored).
    check: bool = False
    attachment_id: SafeId | None = None
    filename: str | None = Field(default=None, max_length=MAX_FILENAME_CHARS)
    mime_type: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, ge=0)


class GetRequest(BaseModel):
    """``data`` of :data:`subjects.QUERY_ATTACHMENT_GET`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    attachment_id: SafeId


# ---------------------------------------------------------------- signed URLs


def url_path(attachment_id: str) -> str:
    return f"{URL_PREFIX}{attachment_id}"


def signature(attachment_id: str, expires: int, secret: str) -> str:
    mac = hmac.new(secret.encode(), f"{attachment_id}.{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode().rstrip("=")


def signed_url(
    attachment_id: str, secret: str, ttl_seconds: float, now: float | None = None
) -> str:
    """``/v1/attachments/<id>?exp=<unix>&sig=<mac>``: readable by whoever holds it until exp.

    The expiry is rounded up to a minute so that the urls of one attachment signed within
    the same minute are the same (a browser caches the image once).
    """
    at = time.time() if now is None else now
    expires = (int(at + ttl_seconds) // 60 + 1) * 60
    return (
        f"{url_path(attachment_id)}?exp={expires}&sig={signature(attachment_id, expires, secret)}"
    )


def verify(
    attachment_id: str, exp: str | None, sig: str | None, secret: str, now: float | None = None
) -> bool:
    """Whether ``exp``/``sig`` of a download URL are genuine and not expired."""
    if not exp or not sig or not exp.isdigit() or len(exp) > 12 or len(sig) > 64:
        return False
    expires = int(exp)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature(attachment_id, expires, secret), sig)


def sign_attachments(items: list[Any], secret: str, ttl_seconds: float) -> list[Any]:
    """Wire attachments (dicts) with their ``url`` signed afresh (stored: the bare path)."""
    now = time.time()
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            out.append({**item, "url": signed_url(item["id"], secret, ttl_seconds, now)})
        else:
            out.append(item)
    return out


def sign_message(doc: Any, secret: str, ttl_seconds: float) -> Any:
    """A wire message (dict) whose attachments' urls are signed afresh; others unchanged."""
    if isinstance(doc, dict) and isinstance(doc.get("attachments"), list) and doc["attachments"]:
        return {**doc, "attachments": sign_attachments(doc["attachments"], secret, ttl_seconds)}
    return doc


def stored_attachment(record: AttachmentRecord) -> Attachment:
    """What a message stores: the seed's shape, the url unsigned (signed when served)."""
    return Attachment(
        id=record.id,
        filename=record.filename,
        mime_type=record.mime_type,
        size=record.size,
        url=url_path(record.id),
    )


async def signing_key(keys: Any, *, create: bool) -> str | None:
    """The deployment's URL signing key, from the store (collection ``keys``, document
    ``attachment-urls``): made once, at random, by the first conversation replica that starts
    (``create``); read by the gateways. No setting to forget, a different key per deployment.
    ``keys`` is a pymongo async collection."""
    if create:  # the first replica's insert wins; the others find it
        await keys.update_one(
            {"_id": KEY_ID},
            {"$setOnInsert": {"secret": secrets.token_urlsafe(48)}},
            upsert=True,
        )
    doc = await keys.find_one({"_id": KEY_ID})
    secret = doc.get("secret") if isinstance(doc, dict) else None
    return secret if isinstance(secret, str) and len(secret) >= 32 else None


# ---------------------------------------------------------------- upload checks


def media_type(header: str | None) -> str | None:
    """``image/png`` of ``image/png; charset=x`` (lower case), None if not a media type."""
    if not header:
        return None
    value = header.split(";", 1)[0].strip().lower()
    return value if _MEDIA_TYPE.fullmatch(value) else None


def allowed_types(setting: str) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in setting.split(",") if t.strip())


def type_allowed(mime: str, allowed: frozenset[str]) -> bool:
    return "*" in allowed or mime in allowed or f"{mime.split('/', maxsplit=1)[0]}/*" in allowed


def content_matches(mime: str, head: bytes) -> bool:
    """Whether the first bytes fit the declared type (checked for the inline image types)."""
    magic = _MAGIC.get(mime)
    if magic is None:
        return True
    if mime == "image/webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return any(head.startswith(m) for m in magic)


def clean_filename(raw: str | None) -> str | None:
    """A displayable file name (no path, no control characters), None if nothing is left."""
    if raw is None:
        return None
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().strip(".")
    if not name or len(name) > MAX_FILENAME_CHARS:
        return None
    return name
