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
from chat.errors import ApiError, BadRequest, TooManyRequests
from chat.http import api_view, owner_of
from chat.ollama import get_client
from chat.requests import (
    parse_bool,
    parse_format,
    parse_json_body,
    parse_keep_alive,
    parse_messages,
    parse_model,
    parse_options,
)
from chat.services import GenerationSession
from chatbot_site.runtime import run_blocking

BUSY = "server busy, please try again.  maximum pending requests exceeded"
CHAT_FIELDS = {"model", "messages", "tools", "stream", "think", "format", "options", "keep_alive"}
GENERATE_FIELDS = {
    "model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format", "images",
    "options", "keep_alive", "think",
}  # fmt: skip
EMBED_FIELDS = {"model", "input", "truncate", "options", "keep_alive", "dimensions"}
# Fields besides model/messages/prompt/options/format that change a generation's answer.
CHAT_EXTRA = ("tools", "think")
GENERATE_EXTRA = ("suffix", "template", "context", "raw", "images", "think")


def ollama_error(exc: ApiError) -> JsonResponse:
    """Ollama's error shape; a full queue is Ollama's own 503 busy."""
    if isinstance(exc, TooManyRequests):
        response = JsonResponse({"error": BUSY}, status=503)
    else:
        response = JsonResponse({"error": exc.message}, status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


def ollama_view(*methods: str) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=ollama_error)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _checked(body: dict[str, Any], fields: set[str]) -> None:
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", code="unknown_field")
    if "model" not in body:
        raise BadRequest("model is required", code="invalid_model")


def _extra(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: body[name] for name in names if body.get(name) is not None}


def _options_and_format(body: dict[str, Any], payload: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """Validate ``options`` and ``format``, add them to the upstream payload, and return them."""
    options, fmt = parse_options(body.get("options")), parse_format(body.get("format"))
    if options:
        payload["options"] = options
    if fmt is not None:
        payload["format"] = fmt
    return options, fmt


async def _load_or_unload(path: str, payload: dict[str, Any]) -> JsonResponse:
    """An empty prompt only loads (or, with keep_alive 0, unloads) the model: pass it through."""
    return JsonResponse(await get_client().request_json("POST", path, payload))


@ollama_view("POST")
async def chat(request: HttpRequest) -> HttpResponseBase:
    """``POST /api/chat``."""
    body = parse_json_body(request)
    _checked(body, CHAT_FIELDS)
    model = parse_model(body["model"])
    messages = parse_messages(body.get("messages", []), allow_empty=True)
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "keep_alive": parse_keep_alive(body.get("keep_alive", settings.OLLAMA_KEEP_ALIVE)),
        **_extra(body, CHAT_EXTRA),
    }
    options, fmt = _options_and_format(body, payload)
    if not messages:
        return await _load_or_unload("/api/chat", payload)
    key = response_key(
        endpoint="chat", model=model, messages=messages, options=options, format=fmt,
        owner=owner_of(request), extra=_extra(body, CHAT_EXTRA),
    )  # fmt: skip
    return await _generate(request, "chat", payload, key, stream=parse_bool(body, "stream", True))


@ollama_view("POST")
async def generate(request: HttpRequest) -> HttpResponseBase:
    """``POST /api/generate``."""
    body = parse_json_body(request)
    _checked(body, GENERATE_FIELDS)
    model = parse_model(body["model"])
    prompt = body.get("prompt") or ""
    system = body.get("system")
    if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
        raise BadRequest("prompt and system must be strings", code="invalid_prompt")
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "keep_alive": parse_keep_alive(body.get("keep_alive", settings.OLLAMA_KEEP_ALIVE)),
        **_extra(body, GENERATE_EXTRA),
    }
    if system is not None:
        payload["system"] = system
    options, fmt = _options_and_format(body, payload)
    if not prompt:
        return await _load_or_unload("/api/generate", payload)
    key = response_key(
        endpoint="generate", model=model, prompt=prompt, system=system, options=options, format=fmt,
        owner=owner_of(request), extra=_extra(body, GENERATE_EXTRA),
    )  # fmt: skip
    return await _generate(request, "generate", payload, key, stream=parse_bool(body, "stream", True))


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
    session = GenerationSession(
        endpoint=endpoint, model=model, payload=payload, cache_key=key, owner=owner_of(request)
    )
    await session.start()
    if not stream:
        content = await session.answer()
        return JsonResponse(_final(endpoint, model, session.final, content))
    try:
        first = await session.first_events()
    except BaseException:
        await session.close()
        raise

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


@ollama_view("POST")
async def embed(request: HttpRequest) -> HttpResponseBase:
    """``POST /api/embed``: passed through, cached by model and input."""
    body = parse_json_body(request)
    _checked(body, EMBED_FIELDS)
    parse_model(body["model"])
    parse_options(body.get("options"))
    if "keep_alive" in body:
        parse_keep_alive(body["keep_alive"])
    text = body.get("input")
    if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))):
        raise BadRequest("input must be a string or a list of strings", code="invalid_input")
    key = response_key(
        endpoint="embed", model=body["model"], options=body.get("options"), owner=owner_of(request),
        extra={k: body.get(k) for k in ("input", "truncate", "dimensions")},
    )  # fmt: skip
    cached = await run_blocking(response_cache.get, key) if settings.RESPONSE_CACHE_ENABLED else None
    if cached is not None:
        return JsonResponse(cached["body"])
    answer = await get_client().request_json("POST", "/api/embed", body)
    if settings.RESPONSE_CACHE_ENABLED:
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


@ollama_view("POST")
async def show(request: HttpRequest) -> HttpResponseBase:
    body = parse_json_body(request)
    model = parse_model(body.get("model") or body.get("name"))
    return JsonResponse(await get_client().request_json("POST", "/api/show", {"model": model}))


@ollama_view("POST", "DELETE", "GET", "HEAD")
async def model_management(request: HttpRequest, digest: str = "") -> HttpResponseBase:
    """pull, push, create, copy, delete, blobs: never forwarded by a shared gateway."""
    return JsonResponse(
        {"error": "model management is disabled on this gateway; ask the Ollama server's operator"},
        status=403,
    )
