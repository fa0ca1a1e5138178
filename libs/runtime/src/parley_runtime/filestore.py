"""Where attachment bytes live: one small interface, two stores (issue 17).

- :class:`GridFSStore` (default): GridFS in the same MongoDB as everything else (pymongo's
  async ``AsyncGridFSBucket``), bucket ``attachment_bytes``; nothing new to run. Checked
  against the embedded store (SecantusDB) by the tests.
- :class:`S3Store`: an S3-compatible bucket (AWS S3, MinIO...) through aiobotocore, for
  production volumes; multipart upload so a file is streamed in parts, never held whole.
  Credentials come the usual AWS way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  instance roles...), never from Parley's own settings.

Keys are attachment ids. Importing this module needs the ``files`` extra of parley-runtime
(pymongo, aiobotocore): only the services that touch bytes (gateways, agent bridges) take it.
:class:`FileStoreSettings` is the part of their Settings that says where the bytes are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from pymongo import AsyncMongoClient

from parley_runtime.mongo import MongoSettings
from parley_runtime.settings import env as _env

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger(__name__)

GRIDFS_BUCKET = "attachment_bytes"
CHUNK = 255 * 1024  # GridFS's default chunk size; also the read size of downloads
S3_PART = 8 * 1024 * 1024  # S3 multipart parts (at least 5 MiB except the last)


class TooLarge(Exception):
    """The stream went past ``max_bytes``; nothing is kept."""


class Missing(Exception):
    """No bytes under that key."""


class FileStore(Protocol):
    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int
    ) -> int:
        """Store the stream under ``key``; its size. TooLarge past max_bytes (nothing kept)."""
        ...

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive. Missing if the key has none."""
        ...

    async def delete(self, key: str) -> None:
        """Forget the bytes (no error if there are none)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StoreConfig:
    kind: Literal["gridfs", "s3"] = "gridfs"
    mongodb_url: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "parley"
    mongodb_options: dict[str, Any] = field(default_factory=dict)  # TLS (parley_runtime.mongo)
    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = "attachments/"


class _Capped:
    """An upload's chunks as they come, counted; ``TooLarge`` once past ``max_bytes``."""

    __slots__ = ("_chunks", "_max_bytes", "size")

    def __init__(self, chunks: AsyncIterator[bytes], max_bytes: int) -> None:
        self._chunks = chunks
        self._max_bytes = max_bytes
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.size += len(chunk)
            if self.size > self._max_bytes:
                raise TooLarge
            yield chunk


def open_store(cfg: StoreConfig) -> FileStore:
    """The configured store; connections open on first use (no I/O here)."""
    if cfg.kind == "s3":
        if not cfg.s3_bucket:
            raise ValueError("PARLEY_ATTACHMENTS_S3_BUCKET is required with the s3 store")
        return S3Store(cfg.s3_bucket, cfg.s3_endpoint_url, cfg.s3_region, cfg.s3_prefix)
    return GridFSStore(cfg.mongodb_url, cfg.mongodb_database, cfg.mongodb_options)


class GridFSStore:
    def __init__(self, url: str, database: str, options: dict[str, Any] | None = None) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, w=1, journal=True, serverSelectionTimeoutMS=5000, **(options or {})
        )
        self._bucket = AsyncGridFSBucket(self._client[database], bucket_name=GRIDFS_BUCKET)

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int
    ) -> int:
        stream = self._bucket.open_upload_stream_with_id(
            key, key, chunk_size_bytes=CHUNK, metadata={"contentType": content_type}
        )
        body = _Capped(chunks, max_bytes)
        try:
            async for chunk in body:
                await stream.write(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                await stream.abort()
            raise
        await stream.close()
        return body.size

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            out = await self._bucket.open_download_stream(key)
        except NoFile:
            raise Missing(key) from None
        try:
            await out.seek(start)
            left = end - start + 1
            while left > 0:
                data = await out.read(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
                yield data
        finally:
            await out.close()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NoFile):
            await self._bucket.delete(key)

    async def close(self) -> None:
        await self._client.close()


class S3Store:
    def __init__(
        self, bucket: str, endpoint_url: str | None, region: str | None, prefix: str
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._endpoint = endpoint_url or None
        self._region = region or None
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None

    async def _s3(self) -> S3Client:
        if self._client is None:
            stack = AsyncExitStack()
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3", endpoint_url=self._endpoint, region_name=self._region
                )
            )
            self._stack, self._client = stack, client
            await self._ensure_bucket(client)
        return self._client

    async def _ensure_bucket(self, s3: S3Client) -> None:
        """Create the bucket on first use if there is none (MinIO in compose starts empty)."""
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            logger.info("creating the attachment bucket %s", self.bucket)
            with contextlib.suppress(ClientError):  # made meanwhile by another gateway
                await s3.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int
    ) -> int:
        s3 = await self._s3()
        name = self._key(key)
        upload = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=name, ContentType=content_type
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        buf = bytearray()
        body = _Capped(chunks, max_bytes)
        try:
            async for chunk in body:
                buf += chunk
                if len(buf) >= S3_PART:
                    await self._part(s3, name, upload_id, parts, bytes(buf))
                    buf.clear()
            if buf or not parts:
                await self._part(s3, name, upload_id, parts, bytes(buf))
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return body.size

    async def _part(
        self, s3: S3Client, name: str, upload_id: str, parts: list[dict[str, Any]], body: bytes
    ) -> None:
        number = len(parts) + 1
        res = await s3.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": res["ETag"]})

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        try:
            res = await s3.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise Missing(key) from None
            raise
        async with res["Body"] as body:
            while True:
                data = await body.read(CHUNK)
                if not data:
                    break
                yield data

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack, self._client = None, None


# ---------------------------------------------------------------- settings


class FileStoreSettings(MongoSettings):
    """Where attachment bytes are: the part of a Settings shared by the services that read or
    write them (gateways, agent bridges). Mixed into each service's own Settings; the
    MongoDB URL, database and TLS come from parley_runtime.mongo."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # "gridfs": in the same MongoDB (bucket attachment_bytes); "s3": an S3-compatible bucket.
    attachments_store: Literal["gridfs", "s3"] = Field(
        default="gridfs", validation_alias=_env("PARLEY_ATTACHMENTS_STORE")
    )
    attachments_s3_bucket: str = Field(
        default="", validation_alias=_env("PARLEY_ATTACHMENTS_S3_BUCKET")
    )
    # MinIO or another S3-compatible server; empty: AWS (credentials: the AWS_* variables).
    attachments_s3_endpoint_url: str = Field(
        default="", validation_alias=_env("PARLEY_ATTACHMENTS_S3_ENDPOINT_URL")
    )
    attachments_s3_region: str = Field(
        default="", validation_alias=_env("PARLEY_ATTACHMENTS_S3_REGION")
    )

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            kind=self.attachments_store,
            mongodb_url=self.mongodb_url,
            mongodb_database=self.mongodb_database,
            mongodb_options=self.mongo_options(),
            s3_bucket=self.attachments_s3_bucket,
            s3_endpoint_url=self.attachments_s3_endpoint_url or None,
            s3_region=self.attachments_s3_region or None,
        )
