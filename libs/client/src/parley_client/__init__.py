"""A typed asyncio client for Parley (docs/protocol.md).

async with ParleyClient(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], token) as c:
    conv = await c.create_conversation(title="hi", agent_id="agent-demo")
    await c.join(conv.id, since_seq=0)
    events = c.events()
    await c.send_message(conv.id, "hello")
    async for frame in events:
        print(frame.event, frame.data)
"""

from parley_client.client import ParleyClient, new_client_message_id
from parley_client.dial import since_param, ws_url
from parley_client.frames import Frame
from parley_client.subscriptions import Recorder, Stream
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event

__all__ = [
    "ErrorCode",
    "Event",
    "Frame",
    "ParleyClient",
    "ParleyError",
    "Recorder",
    "Stream",
    "new_client_message_id",
    "since_param",
    "ws_url",
]
