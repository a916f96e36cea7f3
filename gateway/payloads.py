"""From validated bodies to what goes to Ollama and the cache key that identifies the answer."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from chat.caches import response_key
from core.ollama import keep_alive_param
from gateway.schemas import ChatCompletionsBody, OllamaChatBody, OllamaGenerateBody, QueueBody


def keep_alive(value: Any) -> str | int | float:
    """The request's keep_alive, else ``[ollama] keep_alive``, as Ollama takes it."""
    return keep_alive_param(settings.OLLAMA_KEEP_ALIVE if value is None else value)


def chat_model(body: QueueBody) -> str:
    return body.model or settings.OLLAMA_MODEL


def chat_payload(body: QueueBody, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Ollama's /api/chat payload for a chat-optimized or queued request (``stream`` is added by
    the client)."""
    return {
        "model": chat_model(body),
        "messages": messages,
        "keep_alive": keep_alive(body.keep_alive),
        **body.ollama_fields(),
    }


def chat_key(body: QueueBody, messages: list[dict[str, Any]], owner: str) -> str:
    fields = body.ollama_fields()
    return response_key(
        endpoint="chat",
        model=chat_model(body),
        messages=messages,
        options=fields.get("options"),
        format=fields.get("format"),
        owner=owner,
    )


def messages_of(body: QueueBody | OllamaChatBody) -> list[dict[str, Any]]:
    """The messages as sent (fields the client left out stay out)."""
    return [message.fields_set() for message in body.messages]


def ollama_chat(body: OllamaChatBody, owner: str) -> tuple[dict[str, Any], str]:
    """``/api/chat``: the payload and the cache key."""
    messages = messages_of(body)
    extra = body.answer_fields(OllamaChatBody.ANSWER_FIELDS)
    fields = body.ollama_fields()
    payload = {
        "model": body.model,
        "messages": messages,
        "keep_alive": keep_alive(body.keep_alive),
        **extra,
        **fields,
    }
    key = response_key(
        endpoint="chat", model=body.model, messages=messages, options=fields.get("options"),
        format=fields.get("format"), owner=owner, extra=extra,
    )  # fmt: skip
    return payload, key


def ollama_generate(body: OllamaGenerateBody, owner: str) -> tuple[dict[str, Any], str]:
    """``/api/generate``: the payload and the cache key."""
    extra = body.answer_fields(OllamaGenerateBody.ANSWER_FIELDS)
    fields = body.ollama_fields()
    payload: dict[str, Any] = {
        "model": body.model,
        "prompt": body.prompt or "",
        "keep_alive": keep_alive(body.keep_alive),
        **extra,
        **fields,
    }
    if body.system is not None:
        payload["system"] = body.system
    key = response_key(
        endpoint="generate", model=body.model, prompt=body.prompt or "", system=body.system,
        options=fields.get("options"), format=fields.get("format"), owner=owner, extra=extra,
    )  # fmt: skip
    return payload, key


def openai_chat(body: ChatCompletionsBody, owner: str) -> tuple[str, dict[str, Any], str]:
    """``/v1/chat/completions``: the model, the payload and the cache key."""
    model = body.model or settings.OLLAMA_MODEL
    messages = [message.ollama_message() for message in body.messages]
    options = body.ollama_options()
    fmt = body.response_format.ollama_format() if body.response_format else None
    payload: dict[str, Any] = {"model": model, "messages": messages, "keep_alive": keep_alive(None)}
    if options:
        payload["options"] = options
    if fmt is not None:
        payload["format"] = fmt
    key = response_key(
        endpoint="chat", model=model, messages=messages, options=options, format=fmt, owner=owner
    )
    return model, payload, key
