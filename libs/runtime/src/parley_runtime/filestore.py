"""Where attachment bytes live: one small interface, two stores (issue 17).

- :class:`GridFSStore` (default): GridFS in the same MongoDB as everything else (pymongo's
  async ``AsyncGridFSBucket``), bucket ``attachment_bytes``; nothing new to run. Checked
  against the embedded store (SecantusDB) by the tests.
- ``filestore_s3.S3Store``: an S3-compatible bucket (AWS S3, MinIO...) through aiobotocore, for
  production volumes; multipart upload so a file is streamed in parts, never held whole.
  Credentials come the usual AWS way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  instance roles...), never from Parley's own settings.

Keys are attachment ids. Importing this module needs the ``files`` extra of parley-runtime
(pymongo, aiobotocore): only the services that touch bytes (gateways, agent bridges) take
it, and botocore is only imported when the s3 store is chosen.
:class:`FileStoreSettings` is the part of their Settings that says where the bytes are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from pymongo import AsyncMongoClient

from parley_runtime.mongo import MongoSettings
from parley_runtime.settings import env as _env

logger = logging.getLogger(__name__)

GRIDFS_BUCKET = "attachment_bytes"
CHUNK = 255 * 1024  # GridFS's default chunk size; also the read size of downloads


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


class CappedBody:
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
        # Imported here: botocore costs ~1 s and tens of MB per process that never uses S3.
        from parley_runtime.filestore_s3 import S3Store  # noqa: PLC0415

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
        body = CappedBody(chunks, max_bytes)
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
