"""OpenAI's chat completions API, served by the gateway, so the ``openai`` SDK and everything built on
it get caching, deduplication and queueing. Generations go through the same cache and scheduler."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from chat.caches import response_key
from chat.errors import ApiError, BadRequest
from chat.http import api_view, owner_of
from chat.ollama import get_client
from chat.requests import parse_json_body, parse_messages, parse_model, parse_options
from chat.services import GenerationSession

# OpenAI parameters and the Ollama option each becomes.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "stop": "stop",
}
ACCEPTED = {
    "model", "messages", "stream", "stream_options", "response_format", "n", "user", "metadata", "store",
    *OPTION_NAMES,
}  # fmt: skip
FINISH = {"stop": "stop", "length": "length"}


def openai_error(exc: ApiError) -> JsonResponse:
    kind = "invalid_request_error" if exc.status < 500 else "api_error"
    if exc.status == 429:
        kind = "rate_limit_error"
    response = JsonResponse(
        {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}, status=exc.status
    )
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


def openai_view(*methods: str) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=openai_error)


def _text_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages (content may be a list of parts) as Ollama messages."""
    if not isinstance(raw, list):
        raise BadRequest("messages must be a list.", code="invalid_messages")
    out = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object.", code="invalid_messages")
        role = "system" if message.get("role") == "developer" else message.get("role")
        content = message.get("content")
        if content is None:  # an assistant turn that only called tools
            content = ""
        if isinstance(content, list):
            texts = []
            for part in content:
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise BadRequest(
                        f"messages[{i}]: only text content parts are supported.", code="invalid_messages"
                    )
                texts.append(part["text"])
            content = "".join(texts)
        out.append({"role": role, "content": content})
    return parse_messages(out)


def _ollama_options(body: dict[str, Any]) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    for name, option in OPTION_NAMES.items():
        value = body.get(name)
        if value is not None:  # each checked on its own: two names map to num_predict
            options.update(
                parse_options({option: [value] if name == "stop" and isinstance(value, str) else value})
            )
    return options or None


def _format(body: dict[str, Any]) -> Any:
    spec = body.get("response_format")
    if spec is None or spec == {"type": "text"}:
        return None
    if spec == {"type": "json_object"}:
        return "json"
    if isinstance(spec, dict) and spec.get("type") == "json_schema":
        schema = (spec.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    raise BadRequest("response_format must be text, json_object or json_schema.", code="invalid_format")


@openai_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/chat/completions``."""
    body = parse_json_body(request)
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise BadRequest(f"Unsupported parameter {unknown[0]!r}.", code="unsupported_parameter")
    if body.get("n", 1) != 1:
        raise BadRequest("Only n=1 is supported.", code="unsupported_parameter")
    model = parse_model(settings.OLLAMA_MODEL if body.get("model") in (None, "") else body["model"])
    messages = _text_messages(body.get("messages"))
    options, fmt = _ollama_options(body), _format(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false.", code="invalid_stream")
    payload: dict[str, Any] = {"model": model, "messages": messages, "keep_alive": settings.OLLAMA_KEEP_ALIVE}
    if options:
        payload["options"] = options
    if fmt is not None:
        payload["format"] = fmt
    key = response_key(
        endpoint="chat", model=model, messages=messages, options=options, format=fmt, owner=owner_of(request)
    )
    session = GenerationSession(
        endpoint="chat", model=model, payload=payload, cache_key=key, owner=owner_of(request)
    )
    await session.start()
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": completion_id, "created": created, "model": model, "system_fingerprint": "fp_ollama"}
    if not stream:
        content = await session.answer()
        return JsonResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": FINISH.get(session.final.get("done_reason", "stop"), "stop"),
                    }
                ],
                "usage": _usage(session.final),
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    try:
        first = await session.first_events()
    except BaseException:
        await session.close()
        raise

    def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    async def frames() -> AsyncIterator[bytes]:
        yield frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        async for event in session.events(first):
            if event.kind == "chunk":
                yield frame([{"index": 0, "delta": {"content": event.content}, "finish_reason": None}])
            elif event.kind == "done":
                reason = FINISH.get(event.final.get("done_reason", "stop"), "stop")
                yield frame([{"index": 0, "delta": {}, "finish_reason": reason}])
                if include_usage:
                    yield frame([], usage=_usage(event.final))
                yield b"data: [DONE]\n\n"
            elif event.kind == "error":
                assert event.error is not None
                error = {"message": event.error.message, "type": "api_error", "code": event.error.code}
                yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"

    response = StreamingHttpResponse(frames(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _usage(final: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(final.get("prompt_eval_count", 0)), int(final.get("eval_count", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@openai_view("GET")
async def models(request: HttpRequest) -> HttpResponseBase:
    """``GET /v1/models``: the models Ollama has."""
    data = [
        {"id": m.get("name") or m.get("model"), "object": "model", "created": 0, "owned_by": "library"}
        for m in await get_client().tags()
    ]
    return JsonResponse({"object": "list", "data": data})
