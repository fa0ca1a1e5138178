from __future__ import annotations

import nats
from pymongo import AsyncMongoClient

from parley_devstack.servers import NatsServer, StoreServer


async def test_nats_server_has_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="probe", history=1)
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await nc.close()


async def test_store_server_speaks_mongodb_wire(store_server: StoreServer, db_name: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(store_server.url)
    try:
        coll = client[db_name]["probe"]
        await coll.insert_one({"_id": "a", "n": 1})
        assert await coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    finally:
        await client.close()
