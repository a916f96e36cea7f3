"""``/api/chat-optimized`` and ``/api/chat-queue`` bodies."""

from __future__ import annotations

from typing import Annotated, ClassVar

from gateway.schemas.base import Limit, ModelName
from gateway.schemas.generation import ConversationId, GenerationFields, Messages

CHAT_CODES = {
    "messages": "invalid_messages",
    "model": "invalid_model",
    "stream": "invalid_stream",
    "use_cache": "invalid_use_cache",
    "priority": "invalid_priority",
    "options": "invalid_options",
    "format": "invalid_format",
    "keep_alive": "invalid_keep_alive",
    "conversation_id": "invalid_conversation_id",
    "think": "invalid_think",
    "tools": "invalid_tools",
}


class QueueBody(GenerationFields):
    """``POST /api/chat-queue``: a chat request to run in the background."""

    field_codes: ClassVar[dict[str, str]] = CHAT_CODES

    messages: Messages
    model: ModelName | None = None  # default: [ollama] model
    use_cache: bool = True
    priority: Annotated[int, Limit("LIMITS_MAX_PRIORITY", "range")] = 0


class ChatOptimizedBody(QueueBody):
    """``POST /api/chat-optimized``: a chat request answered on the connection."""

    stream: bool = False
    conversation_id: ConversationId | None = None  # a UUID, or "new" to start one
