"""Ollama's own API, served by the gateway: existing Ollama clients get caching, deduplication and
queueing by pointing their base URL here.

Generations (``/api/chat``, ``/api/generate``) go through the same cache and scheduler as
``/api/chat-optimized`` and are framed as Ollama frames them (NDJSON by default, one JSON object
with ``stream: false``). Read-only calls are merged across the Ollama servers (``/api/tags``,
``/api/ps``) or go to a server that has the model (``/api/show``); ``/api/embed`` is cached by its
input. Model management is never forwarded. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from core.errors import ApiError
from core.generation import Answer, Chunk
from core.values import keep_alive_is_zero
from gateway import payloads
from gateway.embeddings import embeddings
from gateway.http import api_view, ollama_error
from gateway.schemas import EmbedBody, EmbeddingsBody, OllamaChatBody, OllamaGenerateBody, ShowBody
from gateway.session import GenerationSession
from gateway.sse import ending
from queueing import upstream


def ollama_view(
    *methods: str, **declared: Any
) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=ollama_error, **declared)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@ollama_view("POST", body=OllamaChatBody)
async def chat(request: HttpRequest, body: OllamaChatBody) -> HttpResponseBase:
    """``POST /api/chat``."""
    payload = payloads.ollama_chat(body)
    if not body.messages or body.debug_render_only:
        return await _pass_through("/api/chat", payload, body.debug_render_only)
    return await _generate(request, "chat", payload, samples=body.samples(), stream=body.stream)


@ollama_view("POST", body=OllamaGenerateBody)
async def generate(request: HttpRequest, body: OllamaGenerateBody) -> HttpResponseBase:
    """``POST /api/generate``."""
    payload = payloads.ollama_generate(body)
    if not body.prompt or body.debug_render_only:
        return await _pass_through("/api/generate", payload, body.debug_render_only)
    return await _generate(request, "generate", payload, samples=body.samples(), stream=body.stream)


async def _pass_through(path: str, payload: dict[str, Any], render_only: bool | None) -> JsonResponse:
    """An empty prompt only loads (or, with keep_alive 0, unloads) the model; a render-only request
    generates nothing. Neither is queued nor cached: passed straight to Ollama."""
    if render_only:
        payload = {**payload, "_debug_render_only": True, "stream": False}
    elif keep_alive_is_zero(payload.get("keep_alive")):
        return JsonResponse(await upstream.unload(path, payload))
    return JsonResponse(await upstream.request(str(payload["model"]), "POST", path, payload))


def native_chunk(endpoint: str, model: str, chunk: Chunk, *, done: bool = False) -> dict[str, Any]:
    """A record chunk in Ollama's own framing."""
    out: dict[str, Any] = {"model": model, "created_at": _now()}
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": chunk.get("content") or ""}
        message.update({k: v for k, v in chunk.items() if k not in ("content", "logprobs")})
        out["message"] = message
    else:
        out["response"] = chunk.get("content") or ""
        if chunk.get("thinking"):
            out["thinking"] = chunk["thinking"]
    out["done"] = done
    if chunk.get("logprobs"):
        out["logprobs"] = chunk["logprobs"]
    return out


def native_final(
    endpoint: str, model: str, final: dict[str, Any], last: Chunk | None = None
) -> dict[str, Any]:
    out = native_chunk(endpoint, model, last or {}, done=True)
    out.update(final)
    out.setdefault("done_reason", "stop")
    return out


def _whole(endpoint: str, model: str, answer: Answer, final: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer: every chunk added up in one object."""
    if endpoint == "chat":
        last: Chunk = {k: v for k, v in answer.message().items() if k != "role"}
    else:
        last = {"content": answer.text}
        if answer.thinking:
            last["thinking"] = answer.thought
    if answer.logprobs:
        last["logprobs"] = answer.logprobs
    return native_final(endpoint, model, final, last)


async def _generate(
    request: HttpRequest, endpoint: str, payload: dict[str, Any], *, samples: bool, stream: bool
) -> HttpResponseBase:
    model = payload["model"]
    session = GenerationSession(
        await payloads.spec_for(
            request, endpoint=endpoint, payload=payload, samples=samples, streaming=stream
        )
    )
    await session.start()
    if not stream:
        answer = await session.answer()
        return JsonResponse(_whole(endpoint, model, answer, session.final))
    first = await session.first_events()

    async def lines() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield json.dumps(native_chunk(endpoint, model, event.chunk)).encode() + b"\n"
            elif event.kind == "done":
                yield json.dumps(native_final(endpoint, model, event.final)).encode() + b"\n"
            elif event.kind == "error":
                assert event.error is not None
                yield error_line(event.error)

    return StreamingHttpResponse(ending(lines(), on_error=error_line), content_type="application/x-ndjson")


def error_line(error: ApiError) -> bytes:
    """As Ollama does: an error after streaming began is a last ``{"error": ...}`` line."""
    return json.dumps({"error": error.message}).encode() + b"\n"


@ollama_view("POST", body=EmbedBody)
async def embed(request: HttpRequest, body: EmbedBody) -> HttpResponseBase:
    """``POST /api/embed``: passed through, cached by model and input."""
    return JsonResponse(await embeddings(request, "embed", body.native()))


@ollama_view("POST", body=EmbeddingsBody)
async def legacy_embeddings(request: HttpRequest, body: EmbeddingsBody) -> HttpResponseBase:
    """``POST /api/embeddings``: the legacy single-prompt endpoint (unnormalised, as Ollama serves it)."""
    return JsonResponse(await embeddings(request, "embeddings", body.native()))


@ollama_view("GET")
async def tags(request: HttpRequest) -> HttpResponseBase:
    """``GET /api/tags``: the models of every server, each once."""
    return JsonResponse({"models": await upstream.tags()})


@ollama_view("GET")
async def ps(request: HttpRequest) -> HttpResponseBase:
    """``GET /api/ps``: the loaded models of every server, each entry naming its ``server``."""
    return JsonResponse({"models": await upstream.ps()})


@ollama_view("GET")
async def version(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse({"version": await upstream.version()})


@ollama_view("POST", body=ShowBody)
async def show(request: HttpRequest, body: ShowBody) -> HttpResponseBase:
    """``POST /api/show``: from a server that has the model."""
    model = body.model_name
    return JsonResponse(await upstream.request(model, "POST", "/api/show", {"model": model}))


@ollama_view("POST", "DELETE", "GET", "HEAD")
async def model_management(request: HttpRequest, digest: str = "") -> HttpResponseBase:
    """pull, push, create, copy, delete, blobs: never forwarded by a shared gateway."""
    return JsonResponse(
        {"error": "model management is disabled on this gateway; ask the Ollama server's operator"},
        status=403,
    )
