"""The native request Ollama makes of a /v1 request, for tests that predict its reply."""

from __future__ import annotations

from typing import Any

from .anthropic_requests import from_messages_request
from .openai_requests import from_chat_request, from_completion_request
from .responses_requests import from_responses_request

TRANSLATIONS = {
    "/v1/chat/completions": ("/api/chat", from_chat_request),
    "/v1/completions": ("/api/generate", from_completion_request),
    "/v1/responses": ("/api/chat", from_responses_request),
    "/v1/messages": ("/api/chat", from_messages_request),
}


def to_native(path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(native path, native body) for a request to ``path``: ``reply_tokens(native_body, n)`` is
    its content and ``calls_for(native_body, native_path)`` counts it. Native paths pass through."""
    if path not in TRANSLATIONS:
        return path, body
    native_path, translate = TRANSLATIONS[path]
    return native_path, translate(body)
