"""OpenAI's chat completions API, served by the gateway, so the ``openai`` SDK and everything built on
it get caching, deduplication and queueing. Generations go through the same cache and scheduler."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from core.ollama import get_client
from gateway import payloads
from gateway.http import api_view, openai_error, owner_of
from gateway.schemas import ChatCompletionsBody
from gateway.session import GenerationSession, interactive
from gateway.sse import sse_response

FINISH = {"stop": "stop", "length": "length"}


def openai_view(
    *methods: str, **declared: Any
) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=openai_error, **declared)


@openai_view("POST", body=ChatCompletionsBody)
async def chat_completions(request: HttpRequest, body: ChatCompletionsBody) -> HttpResponseBase:
    """``POST /v1/chat/completions``."""
    owner = owner_of(request)
    model, payload, key = payloads.openai_chat(body, owner)
    session = GenerationSession(
        interactive(endpoint="chat", model=model, payload=payload, cache_key=key, owner=owner)
    )
    await session.start()
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": completion_id, "created": created, "model": model, "system_fingerprint": "fp_ollama"}
    if not body.stream:
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
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    first = await session.first_events()

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

    return sse_response(frames())


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
