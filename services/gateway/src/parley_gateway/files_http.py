"""Attachments over HTTP (issue 17; docs/protocol.md section 7, "Attachments").

- ``POST /v1/conversations/{id}/attachments?filename=...``: the body is the file itself
  (``Content-Type`` its media type), streamed into the file store, never held whole.
  Participants who may post only (the conversation service says so before any byte is
  stored); 413 past ``PARLEY_ATTACHMENTS_MAX_BYTES`` (the route's own body limit; a
  ``Content-Length`` over it is refused before reading), 415 for a type not in
  ``PARLEY_ATTACHMENTS_ALLOWED_TYPES`` or bytes that do not match an image type, 422 for a
  missing/unusable file name or an empty body. 201 with the seed's attachment shape.
- ``GET /v1/attachments/{id}``: the bytes, to a participant (bearer token) or to the holder of
  a signed URL (``?exp=&sig=``, what messages carry), once the conversation service said the
  file is still reachable. ``Range`` (one range: 206, 416), ``Content-Disposition`` (inline
  for the images a browser shows, attachment otherwise), ``nosniff`` and a CSP sandbox.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from parley_contract import attachments as att
from parley_contract import envelopes, subjects
from parley_contract.errors import HTTP_STATUS, ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.ids import check_id, new_id
from parley_contract.internal import Principal
from parley_gateway.http_auth import Auth, principal_of
from parley_gateway.hub import Hub
from parley_runtime.filestore import FileStore, Missing, TooLarge, open_store

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d{0,15})-(\d{0,15})$")
SNIFF_BYTES = 16  # what content_matches needs of the first chunk
# Downloads never run as a page of this origin, whatever the bytes are.
_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; sandbox",
    "Cross-Origin-Resource-Policy": "same-site",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": envelopes.ErrorEnvelope} for s in (401, 403, 404, 413, 415, 416, 422, 503)
}


def _fail(
    status: int, code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> Response:
    return JSONResponse(envelopes.fail(code, message, details), status_code=status)


def _envelope_error(envelope: dict[str, Any]) -> Response:
    error = envelope.get("error") or {}
    try:
        status = HTTP_STATUS[ErrorCode(str(error.get("code")))]
    except ValueError:
        status = 500
    return JSONResponse(envelope, status_code=status)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one satisfiable range; None: the whole file (no header,
    several ranges or a syntax we ignore, as RFC 9110 allows); "unsatisfiable": 416."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


def content_disposition(filename: str, mime: str) -> str:
    kind = "inline" if mime in att.INLINE_TYPES else "attachment"
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    quoted = urllib.parse.quote(filename, safe="")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"


class AttachmentRoutes:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.jwt = hub.settings.jwt_config()
        self.types = hub.settings.upload_types()
        self._store: FileStore | None = None
        self._mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self._key: str | None = None

    @property
    def store(self) -> FileStore:
        if self._store is None:
            self._store = open_store(self.settings.store_config())
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._mongo is not None:
            await self._mongo.close()
            self._mongo = None

    async def signing_key(self) -> str | None:
        """The deployment's URL key (made by the conversation service), read once."""
        if self._key is None:
            if self._mongo is None:
                self._mongo = AsyncMongoClient(
                    self.settings.mongodb_url,
                    serverSelectionTimeoutMS=5000,
                    **self.settings.mongo_options(),
                )
            keys = self._mongo[self.settings.mongodb_database][att.KEYS_COLLECTION]
            try:
                self._key = await att.signing_key(keys, create=False)
            except PyMongoError:
                logger.warning("attachment URL key not readable (store unavailable)")
        return self._key

    async def principal(self, authorization: HTTPAuthorizationCredentials | None) -> Principal:
        return await principal_of(authorization, self.jwt)

    async def ask(self, subject: str, principal: Principal, data: dict[str, Any]) -> Any:
        envelope = await self.hub.request(subject, self.hub.command_body(principal, data))
        if not envelope.get("success"):
            raise _Refused(envelope)
        return envelope.get("data")

    # ------------------------------------------------------------ upload

    async def upload(
        self,
        request: Request,
        *,
        conversation_id: str,
        filename: str | None,
        authorization: HTTPAuthorizationCredentials | None,
        content_type: str | None,
        content_length: str | None,
    ) -> Response:
        principal = await self.principal(authorization)
        check_id(conversation_id, "conversationId")
        name = att.clean_filename(filename)
        if name is None:
            raise ParleyError(
                ErrorCode.VALIDATION_ERROR,
                f"filename: required, 1-{att.MAX_FILENAME_CHARS} characters (query parameter)",
                {"field": "filename"},
            )
        mime = att.media_type(content_type)
        if mime is None or not att.type_allowed(mime, self.types):
            return _fail(
                415,
                ErrorCode.VALIDATION_ERROR,
                f"Content-Type {content_type or '(none)'!r} is not accepted for attachments",
                {"field": "Content-Type", "allowed": sorted(self.types)},
            )
        limit = self.settings.attachments_max_bytes
        if content_length and content_length.isdigit() and int(content_length) > limit:
            return _too_large(limit)
        try:
            await self.ask(
                subjects.ATTACHMENT_REGISTER,
                principal,
                {"conversationId": conversation_id, "check": True},
            )
        except _Refused as refused:
            return _envelope_error(refused.envelope)
        attachment_id = new_id(att.ID_PREFIX)
        sniffed = _Sniffed(request.stream(), mime)
        try:
            size = await self.store.put(
                attachment_id, sniffed.chunks(), content_type=mime, max_bytes=limit
            )
        except TooLarge:
            return _too_large(limit)
        except _Mismatch:
            return _fail(
                415,
                ErrorCode.VALIDATION_ERROR,
                f"the bytes are not a {mime} file",
                {"field": "Content-Type"},
            )
        if size == 0:
            await self.store.delete(attachment_id)
            raise ParleyError(ErrorCode.VALIDATION_ERROR, "the file is empty", {"field": "body"})
        data = {
            "conversationId": conversation_id,
            "attachmentId": attachment_id,
            "filename": name,
            "mimeType": mime,
            "size": size,
        }
        try:
            record = await self.ask(subjects.ATTACHMENT_REGISTER, principal, data)
        except _Refused as refused:
            await self.store.delete(attachment_id)
            return _envelope_error(refused.envelope)
        logger.info("attachment %s stored (%d bytes, %s)", attachment_id, size, mime)
        return JSONResponse(envelopes.ok(record), status_code=201)

    # ------------------------------------------------------------ download

    async def download(
        self,
        attachment_id: str,
        authorization: HTTPAuthorizationCredentials | None,
        exp: str | None,
        sig: str | None,
        range_header: str | None,
    ) -> Response:
        check_id(attachment_id, "attachmentId")
        if sig is not None or exp is not None:
            key = await self.signing_key()
            if key is None:
                return _fail(503, ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable")
            if not att.verify(attachment_id, exp, sig, key):
                return _fail(403, ErrorCode.FORBIDDEN, "the link is invalid or has expired")
            principal = Principal(id="gateway", kind=PrincipalKind.SERVICE)
        else:
            principal = await self.principal(authorization)
        try:
            record = await self.ask(
                subjects.QUERY_ATTACHMENT_GET, principal, {"attachmentId": attachment_id}
            )
        except _Refused as refused:
            return _envelope_error(refused.envelope)
        size, mime = int(record["size"]), str(record["mimeType"])
        headers = {
            **_SAFE_HEADERS,
            "Content-Disposition": content_disposition(str(record["filename"]), mime),
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=300",
        }
        wanted = parse_range(range_header, size)
        if wanted == "unsatisfiable":
            return JSONResponse(
                envelopes.fail(ErrorCode.VALIDATION_ERROR, "range not satisfiable", {"size": size}),
                status_code=416,
                headers={**headers, "Content-Range": f"bytes */{size}"},
            )
        status = 200
        start, end = 0, size - 1
        if isinstance(wanted, tuple):
            start, end = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = self.store.read(attachment_id, start, end)
        try:
            first = await anext(body, b"")
        except Missing:
            return _fail(404, ErrorCode.NOT_FOUND, "no such attachment")
        headers["Content-Length"] = str(end - start + 1)
        return StreamingResponse(
            _chain(first, body), status_code=status, media_type=mime, headers=headers
        )


class _Refused(Exception):
    def __init__(self, envelope: dict[str, Any]) -> None:
        super().__init__(envelope)
        self.envelope = envelope


class _Mismatch(Exception):
    """The first bytes do not fit the declared image type."""


class _Sniffed:
    """The request body, the first bytes checked against the declared type."""

    def __init__(self, stream: AsyncIterator[bytes], mime: str) -> None:
        self.stream = stream
        self.mime = mime

    async def chunks(self) -> AsyncIterator[bytes]:
        head = b""
        checked = False
        async for chunk in self.stream:
            if checked:
                yield chunk
                continue
            head += chunk
            if len(head) >= SNIFF_BYTES:
                if not att.content_matches(self.mime, head):
                    raise _Mismatch
                checked = True
                yield head
        if not checked and head:
            if not att.content_matches(self.mime, head):
                raise _Mismatch
            yield head


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


def _too_large(limit: int) -> Response:
    return JSONResponse(
        envelopes.fail(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"attachments may be at most {limit} bytes",
            {"limit": limit},
        ),
        status_code=413,
        headers={"Connection": "close"},
    )


def add_routes(app: FastAPI, hub: Hub) -> AttachmentRoutes:
    routes = AttachmentRoutes(hub)

    @app.post(
        "/v1/conversations/{conversation_id}/attachments",
        tags=["v1"],
        status_code=201,
        response_model=envelopes.SuccessEnvelope,
        responses=_ERRORS,
        max_body_size=hub.settings.attachments_max_bytes,
    )
    async def upload_attachment(  # noqa: PLR0917 (FastAPI parameters)
        request: Request,
        conversation_id: str,
        filename: Annotated[str | None, Query(max_length=1000)] = None,
        authorization: Auth = None,
        content_type: Annotated[str | None, Header()] = None,
        content_length: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Upload one file (the raw body, its media type as Content-Type) to a conversation
        you may post in; the seed's attachment object (``id`` goes into message:send)."""
        return await routes.upload(
            request,
            conversation_id=conversation_id,
            filename=filename,
            authorization=authorization,
            content_type=content_type,
            content_length=content_length,
        )

    @app.get(
        "/v1/attachments/{attachment_id}",
        tags=["v1"],
        response_class=Response,
        responses=_ERRORS,
    )
    async def download_attachment(
        attachment_id: str,
        authorization: Auth = None,
        exp: Annotated[str | None, Query(max_length=20)] = None,
        sig: Annotated[str | None, Query(max_length=100)] = None,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
    ) -> Response:
        """The file, to a participant (bearer token) or with the signed URL a message
        carries; Range requests answer 206."""
        return await routes.download(attachment_id, authorization, exp, sig, range_header)

    return routes
