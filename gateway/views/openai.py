"""OpenAI's API as Ollama's OpenAI layer serves it, through the gateway: the ``openai`` SDK and
everything built on it get caching, deduplication and queueing. Each request becomes the native
request Ollama's layer would build (``gateway.schemas.openai``); the generation record is framed
back as that layer frames it (``middleware/openai.go``)."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from core.errors import ApiError, NotFound
from core.generation import Answer, Chunk
from core.ollama import listed_name
from gateway import payloads
from gateway.embeddings import embeddings
from gateway.http import api_view, openai_error
from gateway.schemas import ChatCompletionsBody, CompletionsBody, OpenAIEmbeddingsBody
from gateway.session import GenerationSession
from gateway.sse import sse_response
from queueing import upstream


def openai_view(
    *methods: str, **declared: Any
) -> Callable[[Callable[..., Awaitable[HttpResponseBase]]], Any]:
    return api_view(*methods, render=openai_error, **declared)


def tool_calls_to_openai(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openai.ToToolCalls: the ids Ollama gave, arguments as a JSON string."""
    out = []
    for call in calls or []:
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id", ""),
                "index": function.get("index", 0),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": json.dumps(function.get("arguments") or {}, separators=(",", ":")),
                },
            }
        )
    return out


def finish_reason(final: dict[str, Any], called_tools: bool) -> str:
    reason = str(final.get("done_reason") or "stop")
    return "tool_calls" if reason == "stop" and called_tools else reason


def usage(final: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(final.get("prompt_eval_count", 0)), int(final.get("eval_count", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse_data(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class ChatCompletionFrames:
    """A record as Ollama's OpenAI layer frames it (middleware.ChatWriter): the first chunk carries
    the role, reasoning goes in ``delta.reasoning`` (a chunk with both is split in two), tool calls
    come whole with their ids, then an empty finish chunk, a usage chunk on request, ``[DONE]``."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
        }
        self.include_usage = include_usage
        self.first_sent = False
        self.called_tools = False

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({**self.head, "choices": choices, **extra})

    def _choice(self, chunk: Chunk, *, reasoning: bool, rest: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if not self.first_sent:
            delta["role"] = "assistant"
        if rest:
            delta["content"] = chunk.get("content") or ""
        if reasoning and chunk.get("thinking"):
            delta["reasoning"] = chunk["thinking"]
        if rest and chunk.get("tool_calls"):
            delta["tool_calls"] = tool_calls_to_openai(chunk["tool_calls"])
            self.called_tools = True
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if rest and chunk.get("logprobs"):
            choice["logprobs"] = {"content": chunk["logprobs"]}
        self.first_sent = True
        return choice

    def chunk(self, chunk: Chunk) -> bytes:
        if chunk.get("thinking") and (chunk.get("content") or chunk.get("tool_calls")):
            thought = self._frame([self._choice(chunk, reasoning=True, rest=False)])
            return thought + self._frame([self._choice(chunk, reasoning=False, rest=True)])
        return self._frame([self._choice(chunk, reasoning=True, rest=True)])

    def done(self, final: dict[str, Any]) -> bytes:
        reason = finish_reason(final, self.called_tools)
        out = self._frame([{"index": 0, "delta": {}, "finish_reason": reason}])
        if self.include_usage:
            out += self._frame([], usage=usage(final))
        return out + b"data: [DONE]\n\n"


def error_frame(error: ApiError) -> bytes:
    """A failure after the stream began, in OpenAI's error shape."""
    return sse_data(
        {"error": {"message": error.message, "type": "api_error", "param": None, "code": error.code}}
    )


def chat_completion(model: str, answer: Answer, final: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` (openai.ToChatCompletion)."""
    calls = tool_calls_to_openai(answer.tool_calls)
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.thinking:
        message["reasoning"] = answer.thought
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(final, bool(calls)),
    }
    if answer.logprobs:
        choice["logprobs"] = {"content": answer.logprobs}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": usage(final),
    }


@openai_view("POST", body=ChatCompletionsBody)
async def chat_completions(request: HttpRequest, body: ChatCompletionsBody) -> HttpResponseBase:
    """``POST /v1/chat/completions``."""
    payload = payloads.openai_chat(body)
    model = str(payload["model"])
    spec = await payloads.spec_for(
        request, endpoint="chat", payload=payload, samples=body.samples(), streaming=body.stream
    )
    session = GenerationSession(spec)
    await session.start()
    if not body.stream:
        return JsonResponse(chat_completion(model, await session.answer(), session.final))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    frames = ChatCompletionFrames(model, include_usage=include_usage)
    first = await session.first_events()

    async def stream() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield frames.chunk(event.chunk)
            elif event.kind == "done":
                yield frames.done(event.final)
            elif event.kind == "error":
                assert event.error is not None
                yield error_frame(event.error)

    return sse_response(stream(), on_error=error_frame)


class CompletionFrames:
    """A record as Ollama's layer frames a text completion (middleware.CompleteWriter)."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id, self.model, self.include_usage = f"cmpl-{uuid.uuid4().hex[:24]}", model, include_usage

    def _completion(self, text: str, reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [{"text": text, "index": 0, "finish_reason": reason}],
            "model": self.model,
            "system_fingerprint": "fp_ollama",
        }

    def chunk(self, chunk: Chunk) -> bytes:
        data = self._completion(chunk.get("content") or "", None)
        if self.include_usage:
            data["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return sse_data(data)

    def done(self, final: dict[str, Any]) -> bytes:
        last = self._completion("", str(final.get("done_reason") or "stop"))
        out = sse_data(last)
        if self.include_usage:
            out += sse_data({**last, "choices": [], "usage": usage(final)})
        return out + b"data: [DONE]\n\n"

    def whole(self, answer: Answer, final: dict[str, Any]) -> dict[str, Any]:
        data = self._completion(answer.text, str(final.get("done_reason") or "stop"))
        return {**data, "usage": usage(final)}


@openai_view("POST", body=CompletionsBody)
async def completions(request: HttpRequest, body: CompletionsBody) -> HttpResponseBase:
    """``POST /v1/completions``: a prompt (and suffix) as Ollama's /api/generate takes it."""
    model = body.model or settings.OLLAMA_MODEL
    payload = {**body.native(model), "keep_alive": payloads.keep_alive(None)}
    spec = await payloads.spec_for(
        request, endpoint="generate", payload=payload, samples=body.samples(), streaming=body.stream
    )
    session = GenerationSession(spec)
    await session.start()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    frames = CompletionFrames(model, include_usage=include_usage)
    if not body.stream:
        return JsonResponse(frames.whole(await session.answer(), session.final))
    first = await session.first_events()

    async def stream() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield frames.chunk(event.chunk)
            elif event.kind == "done":
                yield frames.done(event.final)
            elif event.kind == "error":
                assert event.error is not None
                yield error_frame(event.error)

    return sse_response(stream(), on_error=error_frame)


def _floats_to_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@openai_view("POST", body=OpenAIEmbeddingsBody)
async def embeddings_view(request: HttpRequest, body: OpenAIEmbeddingsBody) -> HttpResponseBase:
    """``POST /v1/embeddings``: through the embedding cache, as Ollama's /api/embed answers it."""
    answer = await embeddings(request, "embed", body.native())
    data = []
    for i, vector in enumerate(answer.get("embeddings") or []):
        value: Any = _floats_to_base64(vector) if body.encoding_format == "base64" else vector
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = int(answer.get("prompt_eval_count", 0))
    return JsonResponse(
        {
            "object": "list",
            "data": data or None,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _owned_by(name: str) -> str:
    parts = name.split(":")[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _model_entry(m: dict[str, Any]) -> dict[str, Any]:
    name = listed_name(m)
    created = 0
    with contextlib.suppress(ValueError, TypeError):
        created = int(
            datetime.fromisoformat(str(m.get("modified_at", "")).replace("Z", "+00:00")[:26]).timestamp()
        )
    return {"id": name, "object": "model", "created": created, "owned_by": _owned_by(name)}


@openai_view("GET")
async def models(request: HttpRequest) -> HttpResponseBase:
    """``GET /v1/models``: the models the Ollama servers have, each once."""
    data = [_model_entry(m) for m in await upstream.tags()]
    return JsonResponse({"object": "list", "data": data or None})


@openai_view("GET")
async def model(request: HttpRequest, name: str) -> HttpResponseBase:
    """``GET /v1/models/{model}``: one model, or OpenAI's 404."""
    for m in await upstream.tags():
        if name in (m.get("name"), m.get("model")):
            return JsonResponse({**_model_entry(m), "id": name})
    raise NotFound(f"model '{name}' not found", code="model_not_found")
