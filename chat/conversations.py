"""Conversation memory: a conversation's messages, stored per owner in the conversation cache."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings

from chat.caches import conversation_cache
from core.errors import NotFound


def conversation_key(owner: str, conversation_id: str) -> str:
    return f"conv:{owner}:{conversation_id}"


def get_conversation(*, owner: str, conversation_id: str, count: bool = False) -> dict[str, Any]:
    """A stored conversation (its messages); 404 when unknown, expired or another owner's."""
    stored = conversation_cache.get(conversation_key(owner, conversation_id), count=count)
    if stored is None:
        raise NotFound(f"No conversation with id {conversation_id}.", code="conversation_not_found")
    return stored


def delete_conversation(*, owner: str, conversation_id: str) -> None:
    """Forget a conversation; 404 when unknown."""
    if not conversation_cache.delete(conversation_key(owner, conversation_id)):
        raise NotFound(f"No conversation with id {conversation_id}.", code="conversation_not_found")


def append_conversation(
    *,
    owner: str,
    conversation_id: str,
    model: str,
    history: list[dict[str, Any]],
    new: list[dict[str, Any]],
    reply: dict[str, Any],
) -> None:
    """Store the conversation with this exchange added (the last writer wins if two race).

    ``reply`` is the assistant message as the generation produced it."""
    messages = [*history, *new, reply]
    conversation_cache.set(
        conversation_key(owner, conversation_id),
        {"conversation_id": conversation_id, "model": model, "messages": messages, "updated_at": time.time()},
    )


def fit_history(history: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the oldest non-system history messages until history + new fits the message limit."""
    room = settings.LIMITS_MAX_MESSAGES - len(new)
    if len(history) <= room:
        return history
    system = [m for m in history if m.get("role") == "system"]
    rest = [m for m in history if m.get("role") != "system"]
    keep = max(room - len(system), 0)
    return [*system, *rest[len(rest) - keep :]] if keep else system[:room]
