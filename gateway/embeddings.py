"""Embeddings for every surface (``/api/embed``, the legacy ``/api/embeddings``, OpenAI's
``/v1/embeddings``): answered from the response cache by model and input, else by Ollama, whose
answer is stored. ``Cache-Control`` is honoured as on generations."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from chat.caches import response_cache, response_key
from core.ollama import get_client
from core.runtime import run_blocking
from gateway.http import owner_of
from gateway.payloads import cache_directives


async def embeddings(request: HttpRequest, path: str, native: dict[str, Any]) -> dict[str, Any]:
    """Ollama's answer to ``native`` on ``path`` (an embedding endpoint), cached."""
    key = response_key(endpoint=path, request=native, owner=owner_of(request))
    read, store = cache_directives(request)
    if settings.CACHE_ENABLED and read:
        cached = await run_blocking(response_cache.get, key)
        if cached is not None:
            body: dict[str, Any] = cached["body"]
            return body
    answer = await get_client().request_json("POST", path, native)
    if settings.CACHE_ENABLED and store:
        await run_blocking(response_cache.set, key, {"endpoint": path, "body": answer})
    return answer
