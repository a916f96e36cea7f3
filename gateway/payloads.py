"""From validated bodies to what goes to Ollama, the cache key that identifies the answer, and the
job spec every surface hands the queue.

The key is computed from the native request itself (what Ollama will see, minus ``stream`` and
``keep_alive``), with ``think`` as Ollama applies it (omitted means on for a thinking model), so
every surface that asks Ollama the same thing shares one entry and one generation.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from chat.caches import response_key
from core.catalogue import effective_think
from core.ollama import keep_alive_param
from gateway.http import owner_of
from gateway.schemas import ChatCompletionsBody, OllamaChatBody, OllamaGenerateBody, QueueBody
from queueing.models import Kind
from queueing.spec import JobSpec


def keep_alive(value: Any) -> str | int | float:
    """The request's keep_alive, else ``[ollama] keep_alive``, as Ollama takes it."""
    return keep_alive_param(settings.OLLAMA_KEEP_ALIVE if value is None else value)


def chat_model(body: QueueBody) -> str:
    return body.model or settings.OLLAMA_MODEL


def messages_of(body: QueueBody | OllamaChatBody) -> list[dict[str, Any]]:
    """The messages as Ollama takes them (empty fields left out)."""
    return [message.native() for message in body.messages]


def chat_payload(body: QueueBody, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Ollama's /api/chat payload for a chat-optimized or queued request (``stream`` is added by
    the client)."""
    return {
        "model": chat_model(body),
        "messages": messages,
        "keep_alive": keep_alive(body.keep_alive),
        **body.ollama_fields(),
    }


def ollama_chat(body: OllamaChatBody) -> dict[str, Any]:
    """``/api/chat``'s payload."""
    return {
        "model": body.model,
        "messages": messages_of(body),
        "keep_alive": keep_alive(body.keep_alive),
        **body.ollama_fields(),
        **body.native_extra(),
    }


def ollama_generate(body: OllamaGenerateBody) -> dict[str, Any]:
    """``/api/generate``'s payload."""
    fields = body.ollama_fields()
    fields.pop("tools", None)  # not a generate field
    return {
        "model": body.model,
        **body.native_prompt(),
        "keep_alive": keep_alive(body.keep_alive),
        **fields,
        **body.native_extra(),
    }


def openai_chat(body: ChatCompletionsBody) -> dict[str, Any]:
    """``/v1/chat/completions`` as the native /api/chat request Ollama's OpenAI layer builds."""
    return {**body.native(body.model or settings.OLLAMA_MODEL), "keep_alive": keep_alive(None)}


async def cache_key(endpoint: str, payload: dict[str, Any], owner: str) -> str:
    think = await effective_think(str(payload["model"]), payload.get("think"))
    request = {**payload, "think": think} if think is not None else payload
    return response_key(endpoint=endpoint, request=request, owner=owner)


def cache_directives(request: HttpRequest) -> tuple[bool, bool]:
    """``Cache-Control`` as a client means it: ``no-cache`` wants a fresh answer (it is still stored),
    ``no-store`` wants it not stored. Returns (read the cache, store the answer)."""
    directives = {d.strip().lower() for d in request.headers.get("Cache-Control", "").split(",")}
    return "no-cache" not in directives, "no-store" not in directives


async def spec_for(
    request: HttpRequest,
    *,
    endpoint: str,
    payload: dict[str, Any],
    samples: bool,
    kind: str = Kind.INTERACTIVE,
    priority: int = 0,
    use_cache: bool = True,
    idempotency_key: str | None = None,
) -> JobSpec:
    """The job spec of a generation request, with its cache key and the client's cache directives."""
    owner = owner_of(request)
    read, store = cache_directives(request)
    return JobSpec(
        kind=kind,
        endpoint=endpoint,
        model=str(payload["model"]),
        payload=payload,
        cache_key=await cache_key(endpoint, payload, owner),
        priority=priority,
        owner=owner,
        use_cache=use_cache and store,
        read_cache=use_cache and read,
        samples=samples,
        idempotency_key=idempotency_key,
    )
