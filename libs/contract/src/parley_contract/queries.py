"""The reads of the NATS side (request/reply, queue group ``conversation``) and the model of
each one's ``data``: the conversations of a principal, one conversation, messages by seq,
durable events since a seq, search, and the attachment records. Their routes are in
:data:`parley_contract.routes.QUERY_ROUTES`, beside the commands'."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from parley_contract.ids import SafeId
from parley_contract.limits import INT64_MAX
from parley_contract.models import ConversationStatus

MAX_QUERY_CHARS = 200  # a search's q


class QueryData(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ListConversationsQuery(QueryData):
    status: ConversationStatus | None = None
    cursor: str | None = Field(default=None, max_length=512)
    limit: int = Field(default=20, ge=1, le=200)


class GetConversationQuery(QueryData):
    conversation_id: SafeId


class ListMessagesQuery(QueryData):
    conversation_id: SafeId
    after_seq: int | None = Field(default=None, ge=0, le=INT64_MAX)
    before_seq: int | None = Field(default=None, ge=1, le=INT64_MAX)
    limit: int = Field(default=50, ge=1, le=500)


class SearchQuery(QueryData):
    q: str = Field(max_length=MAX_QUERY_CHARS)
    cursor: str | None = Field(default=None, max_length=512)
    limit: int = Field(default=20, ge=1, le=50)

    @field_validator("q")
    @classmethod
    def _words(cls, value: str) -> str:
        text = " ".join(value.split())
        if not text:
            raise ValueError("must not be empty")
        if any(ord(c) < 32 or c == "\x7f" for c in text):
            raise ValueError("must not contain control characters")
        return text
