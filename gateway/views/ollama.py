"""Ollama's own API, served by the gateway: existing Ollama clients get caching, deduplication and
queueing by pointing their base URL here.

Generations (``/api/chat``, ``/api/generate``) go through the same cache and scheduler as
``/api/chat-optimized`` and are framed as Ollama frames them (NDJSON by default, one JSON object
with ``stream: false``). Read-only calls pass through; ``/api/embed`` is cached by its input. Model
management is never forwarded. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from chat.caches import response_cache, response_key
from core.ollama import get_client
from core.runtime import run_blocking
from gateway import payloads
from gateway.http import api_view, ollama_error, owner_of
from gateway.schemas import EmbedBody, OllamaChatBody, OllamaGenerateBody, ShowBody
from gateway.session import GenerationSession, interactive


def ollama_view(
    *methods: str, **declared: Any
) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=ollama_error, **declared)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def _load_or_unload(path: str, payload: dict[str, Any]) -> JsonResponse:
    """An empty prompt only loads (or, with keep_alive 0, unloads) the model: pass it through."""
    return JsonResponse(await get_client().request_json("POST", path, payload))


@ollama_view("POST", body=OllamaChatBody)
async def chat(request: HttpRequest, body: OllamaChatBody) -> HttpResponseBase:
    """``POST /api/chat``."""
    payload, key = payloads.ollama_chat(body, owner_of(request))
    if not body.messages:
        return await _load_or_unload("/api/chat", payload)
    return await _generate(request, "chat", payload, key, stream=body.stream)


@ollama_view("POST", body=OllamaGenerateBody)
async def generate(request: HttpRequest, body: OllamaGenerateBody) -> HttpResponseBase:
    """``POST /api/generate``."""
    payload, key = payloads.ollama_generate(body, owner_of(request))
    if not body.prompt:
        return await _load_or_unload("/api/generate", payload)
    return await _generate(request, "generate", payload, key, stream=body.stream)


def _chunk(endpoint: str, model: str, content: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": _now()}
    if endpoint == "chat":
        out["message"] = {"role": "assistant", "content": content}
    else:
        out["response"] = content
    out["done"] = False
    return out


def _final(endpoint: str, model: str, final: dict[str, Any], content: str = "") -> dict[str, Any]:
    out = _chunk(endpoint, model, content)
    out["done"] = True
    out.update(final)
    if "done_reason" not in out:
        out["done_reason"] = "stop"
    return out


async def _generate(
    request: HttpRequest, endpoint: str, payload: dict[str, Any], key: str, *, stream: bool
) -> HttpResponseBase:
    model = payload["model"]
    spec = interactive(
        endpoint=endpoint, model=model, payload=payload, cache_key=key, owner=owner_of(request)
    )
    session = GenerationSession(spec)
    await session.start()
    if not stream:
        content = await session.answer()
        return JsonResponse(_final(endpoint, model, session.final, content))
    first = await session.first_events()

    async def lines() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield json.dumps(_chunk(endpoint, model, event.content)).encode() + b"\n"
            elif event.kind == "done":
                yield json.dumps(_final(endpoint, model, event.final)).encode() + b"\n"
            elif event.kind == "error":
                assert event.error is not None
                # As Ollama does: an error after streaming began is a last {"error": ...} line.
                yield json.dumps({"error": event.error.message}).encode() + b"\n"

    return StreamingHttpResponse(lines(), content_type="application/x-ndjson")


@ollama_view("POST", body=EmbedBody)
async def embed(request: HttpRequest, body: EmbedBody) -> HttpResponseBase:
    """``POST /api/embed``: passed through, cached by model and input."""
    sent = body.fields_set()
    options = body.options.fields_set() if body.options else None
    key = response_key(
        endpoint="embed", model=body.model, options=options, owner=owner_of(request),
        extra={k: sent.get(k) for k in ("input", "truncate", "dimensions")},
    )  # fmt: skip
    cached = await run_blocking(response_cache.get, key) if settings.CACHE_ENABLED else None
    if cached is not None:
        return JsonResponse(cached["body"])
    answer = await get_client().request_json("POST", "/api/embed", sent)
    if settings.CACHE_ENABLED:
        await run_blocking(response_cache.set, key, {"endpoint": "embed", "body": answer})
    return JsonResponse(answer)


@ollama_view("GET")
async def tags(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(await get_client().request_json("GET", "/api/tags"))


@ollama_view("GET")
async def ps(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(await get_client().request_json("GET", "/api/ps"))


@ollama_view("GET")
async def version(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(await get_client().request_json("GET", "/api/version"))


@ollama_view("POST", body=ShowBody)
async def show(request: HttpRequest, body: ShowBody) -> HttpResponseBase:
    return JsonResponse(await get_client().request_json("POST", "/api/show", {"model": body.model_name}))


@ollama_view("POST", "DELETE", "GET", "HEAD")
async def model_management(request: HttpRequest, digest: str = "") -> HttpResponseBase:
    """pull, push, create, copy, delete, blobs: never forwarded by a shared gateway."""
    return JsonResponse(
        {"error": "model management is disabled on this gateway; ask the Ollama server's operator"},
        status=403,
    )
