"""The S3-compatible attachment store (AWS S3, MinIO...) through aiobotocore (issue 17).

Apart from :mod:`parley_runtime.filestore` so that only a process configured for S3 pays for
importing botocore. Multipart upload: a file is streamed in parts, never held whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from parley_runtime.filestore import CHUNK, CappedBody, Missing

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger(__name__)

S3_PART = 8 * 1024 * 1024  # S3 multipart parts (at least 5 MiB except the last)


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
        body = CappedBody(chunks, max_bytes)
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
