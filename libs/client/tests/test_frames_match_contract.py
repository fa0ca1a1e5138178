"""What the servers send is what the contract documents: every frame a client sees during a
session of common commands has data that validates against the event's model in
wire_schema.EVENT_DATA (which the TypeScript types and the AsyncAPI documents are generated
from) and carries no field the model does not know."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from parley_client import Event, Frame, ParleyClient
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_contract.wire_schema import EVENT_DATA
from parley_devstack.stack import Stack


def _unknown_fields(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that ``model`` (and its nested models) has no field for."""
    if isinstance(data, list):
        return [
            u for i, item in enumerate(data) for u in _unknown_fields(model, item, f"{path}{i}.")
        ]
    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    out = [f"{path}{key}" for key in data if key not in fields]
    for key, field in fields.items():
        sub = field.annotation
        for candidate in _models_in(sub):
            out += _unknown_fields(candidate, data.get(key), f"{path}{key}.")
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models inside ``X | None``, ``list[X]``..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_unknown_fields_are_found() -> None:
    from parley_contract.models import Conversation

    data = {"_id": "c", "conversationId": "c", "title": "t", "mood": 1}
    data["participants"] = [{"userId": "u", "role": "user", "joinedAt": "x", "color": "red"}]
    assert _unknown_fields(Conversation, data) == ["mood", "participants.0.color"]


def _check(frame: Frame) -> list[str]:
    models = EVENT_DATA.get(Event(frame.event), ())
    data = frame.raw.get("data")
    if not models:
        return []
    problems: list[str] = []
    for model in models:
        try:
            model.model_validate(data)
        except ValidationError as exc:
            problems.append(f"{frame.event}: {model.__name__}: {exc.errors()[0]}")
            continue
        unknown = _unknown_fields(model, data)
        if not unknown:
            return []
        problems.append(f"{frame.event}: {model.__name__} lacks {unknown}")
    return problems


def _token(sub: str) -> str:
    return mint_token(sub, PrincipalKind.USER, name=sub.title())


async def test_every_frame_of_a_session_fits_its_documented_model(stack: Stack) -> None:
    kim, lee = f"kim-{uuid.uuid4().hex[:6]}", f"lee-{uuid.uuid4().hex[:6]}"
    k = ParleyClient(stack.gateway_url(0), _token(kim))
    seen = k.record()
    await k.connect()
    async with ParleyClient(stack.gateway_url(1), _token(lee)) as other:
        conv = await k.create_conversation(title="shapes", participants=[lee])
        await k.join(conv.id, since_seq=0)
        await other.join(conv.id, since_seq=0)
        await other.typing(conv.id)
        msg = await other.send_message(conv.id, "hello")
        await other.edit_message(conv.id, msg.id, "hello!")
        await k.react(conv.id, msg.id, "👍")
        await other.delete_message(conv.id, msg.id)
        await k.create_task(conv.id, "a task")
        await k.mark_read(conv.id, msg.seq or 1)
        await k.update_conversation(conv.id, title="shapes 2")
        await seen.wait_for(
            lambda f: (
                f.event == Event.CONVERSATION_UPDATED
                and getattr(f.data, "title", None) == "shapes 2"
            ),
            10,
        )
    await k.close()
    names = {f.event for f in seen.frames}
    expected = {
        "connected",
        "conversation:joined",
        "conversation:updated",
        "message:new",
        "message:updated",
        "message:reacted",
        "message:deleted",
        "task:created",
        "typing:start",
        "presence:online",
    }
    assert expected <= names, names
    problems = [p for f in seen.frames for p in _check(f)]
    assert problems == []
