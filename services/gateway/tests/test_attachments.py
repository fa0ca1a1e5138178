"""Issue 17, attachments end to end on real processes: two gateways, the conversation
service, NATS and the embedded store (GridFS in it).

Upload over HTTP (and its refusals: 401, 403, 413, 415, 422), download by a participant on
the other gateway (type, disposition, nosniff, ranges) and its refusal for anyone else, the
signed URL a message carries, ``message:send`` by id, and files made unreachable by deleting
their message or conversation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley_client.testing import png, upload_request
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack, StackConfig
from parley_devstack.testing import module_stack

from .conftest import token

MAX_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    env = {"PARLEY_ATTACHMENTS_MAX_BYTES": str(MAX_BYTES)}
    with module_stack(nats_server, store_server, servers_dir, "attach", gateway_env=env) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _auth(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub)}"}


async def _create(client: Any, **data: Any) -> str:
    r = await client.cmd("conversation:create", {"title": "files", **data})
    assert r["success"], r
    cid: str = r["data"]["_id"]
    return cid


async def test_upload_download_and_refusals(
    stack: Stack, clients: Any, http: httpx.AsyncClient
) -> None:
    ada, bob, eve = _uid("ada"), _uid("bob"), _uid("eve")
    a = await clients(stack.ws_url(0), ada)
    cid = await _create(a, participants=[bob])
    g0, g1 = stack.gateway_url(0), stack.gateway_url(1)
    image = png()

    r = await http.send(upload_request(g0, cid, token(ada), image, filename="Q3 chart (final).png"))
    assert r.status_code == 201, r.text
    item = r.json()["data"]
    assert item["filename"] == "Q3 chart (final).png"
    assert (item["mimeType"], item["size"]) == ("image/png", len(image))
    assert item["id"].startswith("att-") and item["url"].startswith(
        f"/v1/attachments/{item['id']}?"
    )

    # Not yet in a message: only the uploader may read it.
    url = f"{g1}/v1/attachments/{item['id']}"
    r = await http.get(url, headers=_auth(ada))
    assert r.status_code == 200 and r.content == image
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("inline;")
    assert "filename*=UTF-8''Q3%20chart%20%28final%29.png" in r.headers["content-disposition"]
    r = await http.get(url, headers=_auth(bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"

    # Ranges: one range 206, past the end 416; HEAD has the headers only.
    r = await http.get(url, headers={**_auth(ada), "Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == image[:8]
    assert r.headers["content-range"] == f"bytes 0-7/{len(image)}"
    r = await http.get(url, headers={**_auth(ada), "Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == image[-4:]
    r = await http.get(url, headers={**_auth(ada), "Range": f"bytes={len(image)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(image)}"
    r = await http.head(url, headers=_auth(ada))
    assert r.status_code == 200 and r.headers["content-length"] == str(len(image))

    # The refusals, each in the error envelope.
    r = await http.send(upload_request(g0, cid, token(eve), image))
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN", r.text
    r = await http.post(f"{g0}/v1/conversations/{cid}/attachments?filename=a.png", content=image)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    r = await http.send(
        upload_request(
            g0,
            cid,
            token(ada),
            b"MZ\x90\x00" * 10,
            filename="x.exe",
            ctype="application/x-msdownload",
        )
    )
    assert r.status_code == 415 and r.json()["error"]["details"]["field"] == "Content-Type"
    r = await http.send(
        upload_request(
            g0, cid, token(ada), b"<svg onload=alert(1)>", filename="x.svg", ctype="image/svg+xml"
        )
    )
    assert r.status_code == 415
    r = await http.send(
        upload_request(g0, cid, token(ada), b"not a png at all, really", filename="fake.png")
    )
    assert r.status_code == 415 and "not a image/png" in r.json()["error"]["message"]
    r = await http.send(
        upload_request(
            g0, cid, token(ada), b"x" * (MAX_BYTES + 1), filename="big.txt", ctype="text/plain"
        )
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert r.json()["error"]["details"]["limit"] == MAX_BYTES

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b"y" * 65536

    r = await http.post(
        f"{g1}/v1/conversations/{cid}/attachments?filename=stream.txt",
        content=chunked(),
        headers={**_auth(ada), "Content-Type": "text/plain"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE", r.text
    r = await http.send(upload_request(g0, cid, token(ada), image, filename=""))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "filename"
    r = await http.send(
        upload_request(g0, cid, token(ada), b"", filename="empty.txt", ctype="text/plain")
    )
    assert r.status_code == 422
    r = await http.send(upload_request(g0, "bad.id", token(ada), image))
    assert r.status_code == 422
    r = await http.get(f"{g0}/v1/attachments/{item['id']}")
    assert r.status_code == 401
    r = await http.get(f"{g0}/v1/attachments/att-nope", headers=_auth(ada))
    assert r.status_code == 404


async def test_message_references_signed_urls_and_deletion(
    stack: Stack, clients: Any, http: httpx.AsyncClient
) -> None:
    ada, bob, eve = _uid("ada"), _uid("bob"), _uid("eve")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(1), bob)
    e = await clients(stack.ws_url(1), eve)
    cid = await _create(a, participants=[bob])
    other = await _create(e)
    for c in (a, b):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    g0, g1 = stack.gateway_url(0), stack.gateway_url(1)
    image, notes = png(), b"line one\nline two\n"
    img = (await http.send(upload_request(g0, cid, token(ada), image))).json()["data"]
    txt = (
        await http.send(
            upload_request(g1, cid, token(ada), notes, filename="notes.txt", ctype="text/plain")
        )
    ).json()["data"]

    # Someone else's upload, or one made for another conversation, cannot be sent.
    r = await b.cmd(
        "message:send", {"conversationId": cid, "content": "mine?", "attachments": [img["id"]]}
    )
    assert (
        r["error"]["code"] == "NOT_FOUND" and r["error"]["details"]["field"] == "attachments.0.id"
    )
    theirs = (await http.send(upload_request(g1, other, token(eve), image))).json()["data"]
    r = await a.cmd(
        "message:send",
        {"conversationId": cid, "content": "x", "attachments": [{"id": theirs["id"]}]},
    )
    assert r["error"]["code"] == "NOT_FOUND"

    # By id (a bare id, or the object the upload returned): stored in the seed's shape.
    r = await a.cmd(
        "message:send",
        {"conversationId": cid, "content": "", "attachments": [img, {"id": txt["id"]}]},
    )
    assert r["success"], r
    sent = r["data"]["attachments"]
    assert [(x["id"], x["filename"], x["mimeType"], x["size"]) for x in sent] == [
        (img["id"], "chart.png", "image/png", len(image)),
        (txt["id"], "notes.txt", "text/plain", len(notes)),
    ]
    new = await b.wait_for(
        lambda f: f.get("event") == "message:new" and f["data"].get("attachments")
    )
    got = new["data"]["attachments"]
    assert set(got[0]) == {"id", "filename", "mimeType", "size", "url"}
    # The url works without a token (an <img> tag), on either gateway; a forged one does not.
    r = await http.get(g1 + got[0]["url"])
    assert r.status_code == 200 and r.content == image
    r = await http.get(g0 + got[1]["url"])
    assert r.status_code == 200 and r.content == notes
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["content-type"].startswith("text/plain")
    forged = got[0]["url"].replace(img["id"], txt["id"])
    assert (await http.get(g0 + forged)).status_code == 403
    # Bob may read it now (it is in a message); Eve may not.
    r = await http.get(f"{g1}/v1/attachments/{img['id']}", headers=_auth(bob))
    assert r.status_code == 200 and r.content == image
    r = await http.get(f"{g1}/v1/attachments/{img['id']}", headers=_auth(eve))
    assert r.status_code == 403
    # History over HTTP carries freshly signed urls too.
    r = await http.get(f"{g1}/v1/conversations/{cid}/messages", headers=_auth(bob))
    listed = [m for m in r.json()["data"]["items"] if m.get("attachments")]
    assert "sig=" in listed[0]["attachments"][0]["url"]
    # Bob may attach it again in the same conversation (it is shown there already).
    r = await b.cmd(
        "message:send", {"conversationId": cid, "content": "again", "attachments": [txt["id"]]}
    )
    assert r["success"], r

    # Deleting the message makes the image unreachable (token and signed url alike); the
    # text file is still carried by Bob's message.
    r = await a.cmd("message:delete", {"conversationId": cid, "messageId": new["data"]["_id"]})
    assert r["success"], r
    assert (await http.get(g0 + got[0]["url"])).status_code == 404
    r = await http.get(f"{g0}/v1/attachments/{img['id']}", headers=_auth(ada))
    assert r.status_code == 404
    r = await a.cmd(
        "message:send", {"conversationId": cid, "content": "x", "attachments": [img["id"]]}
    )
    assert r["error"]["code"] == "NOT_FOUND"
    r = await http.get(f"{g0}/v1/attachments/{txt['id']}", headers=_auth(ada))
    assert r.status_code == 200 and r.content == notes

    # Deleting the conversation takes all its files with it.
    keep = (await http.send(upload_request(g0, cid, token(ada), image))).json()["data"]
    r = await a.cmd(
        "message:send", {"conversationId": cid, "content": "k", "attachments": [keep["id"]]}
    )
    assert r["success"], r
    signed = r["data"]["attachments"][0]["url"]
    assert (await http.get(g1 + signed)).status_code == 200
    r = await http.delete(f"{g0}/v1/conversations/{cid}", headers=_auth(ada))
    assert r.status_code == 200, r.text
    assert (await http.get(g1 + signed)).status_code == 404
    assert (
        await http.get(f"{g1}/v1/attachments/{keep['id']}", headers=_auth(bob))
    ).status_code == 404


@pytest.fixture(scope="module")
def s3_stack(store_server: StoreServer, servers_dir: Path) -> Iterator[tuple[Stack, str]]:
    """One gateway storing bytes in an S3 bucket: moto's standalone S3 server, over HTTP.
    Its own nats-server: a conversation service of the other stack (another database) must
    not answer its requests."""
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    cfg = StackConfig(
        workdir=servers_dir / f"attach-s3-{uuid.uuid4().hex[:8]}",
        mongodb_url=store_server.url,
        database=f"parley_attach_s3_{uuid.uuid4().hex[:10]}",
        gateway_ports=[free_port()],
        conversation_replicas=1,
        agent_bridges=0,
        service_env={
            "gateway": {
                "PARLEY_ATTACHMENTS_STORE": "s3",
                "PARLEY_ATTACHMENTS_S3_BUCKET": "parley-attachments",
                "PARLEY_ATTACHMENTS_S3_ENDPOINT_URL": endpoint,
                "PARLEY_ATTACHMENTS_S3_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
            }
        },
    )
    try:
        with Stack(cfg) as s:
            yield s, endpoint
    finally:
        s3.stop()


async def test_s3_store_end_to_end(
    s3_stack: tuple[Stack, str], clients: Any, http: httpx.AsyncClient
) -> None:
    """The same flow with PARLEY_ATTACHMENTS_STORE=s3: the bytes are in the bucket (read back
    with aiobotocore's own client), served with ranges and by the signed link."""
    from aiobotocore.session import get_session

    stack, endpoint = s3_stack
    ada, bob = _uid("ada"), _uid("bob")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(0), bob)
    cid = await _create(a, participants=[bob])
    assert (await b.cmd("conversation:join", {"conversationId": cid}))["success"]
    g0 = stack.gateway_url(0)
    image = png(300, 200)  # a few KB
    r = await http.send(upload_request(g0, cid, token(ada), image))
    assert r.status_code == 201, r.text
    item = r.json()["data"]
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ) as s3:
        obj = await s3.get_object(Bucket="parley-attachments", Key=f"attachments/{item['id']}")
        async with obj["Body"] as body:
            assert await body.read() == image
        assert obj["ContentType"] == "image/png"
    r = await a.cmd(
        "message:send", {"conversationId": cid, "content": "s3", "attachments": [item["id"]]}
    )
    assert r["success"], r
    new = await b.wait_for(
        lambda f: f.get("event") == "message:new" and f["data"].get("attachments")
    )
    link = new["data"]["attachments"][0]["url"]
    r = await http.get(g0 + link)
    assert r.status_code == 200 and r.content == image
    r = await http.get(g0 + link, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == image[10:20]
    r = await a.cmd("message:delete", {"conversationId": cid, "messageId": new["data"]["_id"]})
    assert r["success"], r
    assert (await http.get(g0 + link)).status_code == 404
