"""The attachment byte stores on real servers: GridFS in the embedded MongoDB-wire store
(SecantusDB) and S3 on moto's standalone S3 server (real HTTP, aiobotocore's signing)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from parley_contract import attachments as att
from parley_devstack.servers import StoreServer
from parley_runtime.filestore import FileStore, Missing, StoreConfig, TooLarge, open_store
from parley_runtime.filestore_s3 import S3_PART


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["gridfs", "s3"])
async def store(
    request: pytest.FixtureRequest,
    store_server: StoreServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[FileStore]:
    if request.param == "gridfs":
        cfg = StoreConfig(
            mongodb_url=store_server.url, mongodb_database=f"fs_{uuid.uuid4().hex[:8]}"
        )
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        bucket = f"parley-{uuid.uuid4().hex[:8]}"
        cfg = StoreConfig(
            kind="s3", s3_bucket=bucket, s3_endpoint_url=endpoint, s3_region="us-east-1"
        )
    fs = open_store(cfg)  # the S3 store creates its bucket on first use
    try:
        yield fs
    finally:
        await fs.close()


async def _stream(data: bytes, step: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


async def _read(fs: FileStore, key: str, start: int, end: int) -> bytes:
    return b"".join([c async for c in fs.read(key, start, end)])


async def test_put_read_ranges_delete(store: FileStore) -> None:
    data = os.urandom(S3_PART + 300_000)  # two S3 parts, several GridFS chunks
    size = await store.put("att-a", _stream(data), content_type="image/png", max_bytes=len(data))
    assert size == len(data)
    assert await _read(store, "att-a", 0, len(data) - 1) == data
    mid = S3_PART - 10
    assert await _read(store, "att-a", mid, mid + 20) == data[mid : mid + 21]
    assert await _read(store, "att-a", len(data) - 5, len(data) - 1) == data[-5:]
    await store.delete("att-a")
    with pytest.raises(Missing):
        await _read(store, "att-a", 0, 0)
    await store.delete("att-a")  # nothing there: no error


async def test_too_large_keeps_nothing(store: FileStore) -> None:
    with pytest.raises(TooLarge):
        await store.put(
            "att-b", _stream(b"z" * 200_000), content_type="text/plain", max_bytes=100_000
        )
    with pytest.raises(Missing):
        await _read(store, "att-b", 0, 0)


def test_signed_urls() -> None:
    url = att.signed_url("att-1", "s" * 40, 600, now=1_000_000)
    path, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert path == "/v1/attachments/att-1"
    assert att.verify("att-1", params["exp"], params["sig"], "s" * 40, now=1_000_100)
    assert not att.verify("att-2", params["exp"], params["sig"], "s" * 40, now=1_000_100)
    assert not att.verify("att-1", params["exp"], params["sig"], "t" * 40, now=1_000_100)
    assert not att.verify("att-1", params["exp"], params["sig"], "s" * 40, now=1_000_000 + 7200)
    assert not att.verify("att-1", "12x", params["sig"], "s" * 40)


def test_upload_checks() -> None:
    assert att.media_type("Image/PNG; charset=binary") == "image/png"
    assert att.media_type("nonsense") is None
    allowed = att.allowed_types("image/*, text/plain")
    assert att.type_allowed("image/webp", allowed) and not att.type_allowed("text/html", allowed)
    assert att.content_matches("image/png", b"\x89PNG\r\n\x1a\n....")
    assert not att.content_matches("image/jpeg", b"<html>")
    assert att.clean_filename("../../etc/passwd") == "passwd"
    assert att.clean_filename("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert att.clean_filename("a\x00b\u202e.txt") == "ab.txt"
    assert att.clean_filename("...") is None
