"""Domain rules of conversations and messages: plain functions, no network, no store.

Authorization, role rules, document construction, totals of a batch and the agent-switch
system message live here so they are unit-tested without NATS or MongoDB. One module per
seam (clock, access, checks, conversations, messages, paging); callers use ``domain.X``.
"""

from parley_conversation.domain.access import (
    active_participant,
    authorize,
    can_access,
    deleted_error,
    is_author,
    is_owner,
)
from parley_conversation.domain.checks import MAX_METADATA_DEPTH, check_emoji, check_keys
from parley_conversation.domain.clock import later_than, now_ms
from parley_conversation.domain.conversations import (
    ConversationChange,
    agent_may_title,
    agent_offline_message,
    agent_switch_message,
    apply_update,
    call_cost,
    delete_conversation,
    new_conversation,
    new_task,
    title_source,
    with_call_cost,
)
from parley_conversation.domain.messages import (
    AGENT_ONLY_FIELDS,
    LAST_MESSAGE_PREVIEW_CHARS,
    ROLE_TYPES,
    Totals,
    deleted,
    edited,
    last_message_of,
    new_message,
    resolve_role,
    totals_of,
)
from parley_conversation.domain.paging import cap_page

__all__ = [
    "AGENT_ONLY_FIELDS",
    "LAST_MESSAGE_PREVIEW_CHARS",
    "MAX_METADATA_DEPTH",
    "ROLE_TYPES",
    "ConversationChange",
    "Totals",
    "active_participant",
    "agent_may_title",
    "agent_offline_message",
    "agent_switch_message",
    "apply_update",
    "authorize",
    "call_cost",
    "can_access",
    "cap_page",
    "check_emoji",
    "check_keys",
    "delete_conversation",
    "deleted",
    "deleted_error",
    "edited",
    "is_author",
    "is_owner",
    "last_message_of",
    "later_than",
    "new_conversation",
    "new_message",
    "new_task",
    "now_ms",
    "resolve_role",
    "title_source",
    "totals_of",
    "with_call_cost",
]
