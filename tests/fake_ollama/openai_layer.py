"""Ollama's OpenAI-compatible layer: /v1/chat/completions, /v1/completions, /v1/embeddings and
/v1/models (openai/openai.go, middleware/openai.go). Each request is translated to the native
request Ollama's middleware builds, served by the native handler, and its chunks converted back."""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from typing import Any

from .openai_requests import _check, from_chat_request, from_completion_request
from .rules import HttpError, f32_json, floats_to_base64
from .sinks import CompatSink
from .wire import SSE_TYPE, Stream, dumps, send_json, unix_now, unix_of


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def owned_by(name: str) -> str:
    parts = name.split(":")[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


class OpenAISink(CompatSink):
    async def error(self, status: int, message: str) -> None:
        await send_json(self.writer, status, openai_error(status, message), "application/json", newline=True)


def tool_calls_to_openai(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openai.ToToolCalls: arguments become a JSON string."""
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
                    "arguments": dumps(function.get("arguments") or {}),
                },
            }
        )
    return out


class ChatCompletionSink(OpenAISink):
    """middleware.ChatWriter."""

    def __init__(self, writer: asyncio.StreamWriter, stream: bool, stream_options: Any) -> None:
        super().__init__(writer)
        self.body = Stream(writer, SSE_TYPE)
        self.stream = stream
        self.include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        self.id = f"chatcmpl-{random.randrange(999)}"
        self.first_sent = False
        self.tool_call_sent = False
        self.created: int | None = None

    def _chunk(self, r: dict[str, Any], created: int, include_role: bool) -> dict[str, Any]:
        message = r.get("message") or {}
        delta: dict[str, Any] = {}
        if include_role:
            delta["role"] = "assistant"
        delta["content"] = message.get("content", "")
        if message.get("thinking"):
            delta["reasoning"] = message["thinking"]
        if message.get("tool_calls"):
            delta["tool_calls"] = tool_calls_to_openai(message["tool_calls"])
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if r.get("logprobs"):
            choice["logprobs"] = {"content": r["logprobs"]}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": r.get("model", ""),
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
        }

    async def chunk(self, r: dict[str, Any]) -> None:
        created = unix_of(r["created_at"]) if r.get("created_at") else unix_now()
        if self.created is None:
            self.created = created
        message = r.get("message") or {}
        trailer = (
            r.get("done")
            and self.first_sent
            and not message.get("content")
            and not message.get("thinking")
            and not message.get("tool_calls")
            and not r.get("logprobs")
        )
        if not trailer:
            mixed = message.get("thinking") and (message.get("content") or message.get("tool_calls"))
            chunks = [self._chunk(r, self.created, not self.first_sent)]
            if mixed:
                reasoning, rest = chunks[0], self._chunk(r, self.created, False)
                reasoning["choices"][0]["delta"].pop("content", None)
                reasoning["choices"][0]["delta"].pop("tool_calls", None)
                rest["choices"][0]["delta"].pop("reasoning", None)
                rest["choices"][0].pop("logprobs", None)
                chunks = [reasoning, rest]
            for c in chunks:
                if c["choices"][0]["delta"].get("tool_calls"):
                    self.tool_call_sent = True
                await self.body.sse(None, c)
            self.first_sent = True
        if r.get("done"):
            reason = r.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": r.get("model", ""),
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
            }
            await self.body.sse(None, finish)
            if self.include_usage:
                usage = {**finish, "choices": [], "usage": _usage(r)}
                await self.body.sse(None, usage)
            await self.body.sse(None, "[DONE]")

    async def whole(self, r: dict[str, Any]) -> None:
        await send_json(self.writer, 200, to_chat_completion(self.id, r), "application/json", newline=True)


def _usage(r: dict[str, Any]) -> dict[str, int]:
    prompt, completion = r.get("prompt_eval_count", 0), r.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def to_chat_completion(id_: str, r: dict[str, Any]) -> dict[str, Any]:
    message = r.get("message") or {}
    calls = tool_calls_to_openai(message.get("tool_calls") or [])
    out_message: dict[str, Any] = {"role": message.get("role", ""), "content": message.get("content", "")}
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    reason = r.get("done_reason") or ""
    if reason == "stop" and calls:
        reason = "tool_calls"
    choice: dict[str, Any] = {"index": 0, "message": out_message, "finish_reason": reason or None}
    if r.get("logprobs"):
        choice["logprobs"] = {"content": r["logprobs"]}
    out = {
        "id": id_,
        "object": "chat.completion",
        "created": unix_of(r["created_at"]) if r.get("created_at") else unix_now(),
        "model": r.get("model", ""),
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": _usage(r),
    }
    if r.get("_debug_info"):
        out["_debug_info"] = r["_debug_info"]
    return out


class CompletionSink(OpenAISink):
    """middleware.CompleteWriter."""

    def __init__(self, writer: asyncio.StreamWriter, stream: bool, stream_options: Any) -> None:
        super().__init__(writer)
        self.body = Stream(writer, SSE_TYPE)
        self.include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        self.id = f"cmpl-{random.randrange(999)}"

    def _completion(self, r: dict[str, Any], created: int, obj_order_chunk: bool) -> dict[str, Any]:
        choice = {"text": r.get("response", ""), "index": 0, "finish_reason": r.get("done_reason") or None}
        if obj_order_chunk:
            return {
                "id": self.id,
                "object": "text_completion",
                "created": created,
                "choices": [choice],
                "model": r.get("model", ""),
                "system_fingerprint": "fp_ollama",
            }
        return {
            "id": self.id,
            "object": "text_completion",
            "created": created,
            "model": r.get("model", ""),
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
            "usage": _usage(r),
        }

    async def chunk(self, r: dict[str, Any]) -> None:
        c = self._completion(r, unix_now(), True)
        if self.include_usage:
            c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        await self.body.sse(None, c)
        if r.get("done"):
            if self.include_usage:
                await self.body.sse(None, {**c, "choices": [], "usage": _usage(r)})
            await self.body.sse(None, "[DONE]")

    async def whole(self, r: dict[str, Any]) -> None:
        created = unix_of(r["created_at"]) if r.get("created_at") else unix_now()
        await send_json(
            self.writer, 200, self._completion(r, created, False), "application/json", newline=True
        )


class OpenAILayer:
    """Mixin for FakeOllama."""

    async def _v1_chat(
        self, path: str, body: dict[str, Any], reader: Any, writer: asyncio.StreamWriter
    ) -> bool:
        sink = ChatCompletionSink(writer, body.get("stream") is True, body.get("stream_options"))
        try:
            native = from_chat_request(body)
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True
        return await self._serve_generation(
            "/api/chat", native, reader, writer, sink, surface=path, surface_body=body
        )

    async def _v1_completions(self, path: str, body: dict[str, Any], reader: Any, writer: Any) -> bool:
        sink = CompletionSink(writer, body.get("stream") is True, body.get("stream_options"))
        try:
            native = from_completion_request(body)
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True
        return await self._serve_generation(
            "/api/generate", native, reader, writer, sink, surface=path, surface_body=body
        )

    async def _v1_embeddings(self, path: str, body: dict[str, Any], reader: Any, writer: Any) -> bool:
        sink = OpenAISink(writer)
        try:
            _check(
                "EmbedRequest",
                body,
                {"model": (str, "string"), "dimensions": (int, "int"), "encoding_format": (str, "string")},
            )
            encoding = body.get("encoding_format") or ""
            if encoding and encoding.lower() not in ("float", "base64"):
                raise HttpError(
                    400,
                    f"Invalid value for 'encoding_format' = {encoding}. "
                    "Supported values: ['float', 'base64'].",
                )
            text = body.get("input")
            if text == "":
                text = [""]
            if text is None or text == []:
                raise HttpError(400, "invalid input")
            native: dict[str, Any] = {"model": body.get("model", ""), "input": text}
            if body.get("dimensions"):
                native["dimensions"] = body["dimensions"]
            native["options"] = None
            response = await self.embed_response(native, surface=path, surface_body=body)
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True
        data = []
        for i, vector in enumerate(response["embeddings"]):
            value: Any = (
                floats_to_base64(vector) if encoding.lower() == "base64" else [f32_json(v) for v in vector]
            )
            data.append({"object": "embedding", "embedding": value, "index": i})
        tokens = response.get("prompt_eval_count", 0)
        out = {
            "object": "list",
            "data": data or None,
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await send_json(writer, 200, out, "application/json", newline=True)
        return True

    async def _v1_models(self, path: str, body: Any, reader: Any, writer: Any) -> bool:
        data = [
            {"id": m.name, "object": "model", "created": unix_of(m.modified_at), "owned_by": owned_by(m.name)}
            for m in self.models.values()
        ]
        await send_json(
            writer, 200, {"object": "list", "data": data or None}, "application/json", newline=True
        )
        return True

    async def _v1_model(self, path: str, body: Any, reader: Any, writer: Any) -> bool:
        name = urllib.parse.unquote(path[len("/v1/models/") :])
        m = self._resolve(name) if name else None
        if m is None:
            await OpenAISink(writer).error(404, f"model '{name}' not found")
            return True
        out = {"id": name, "object": "model", "created": unix_of(m.modified_at), "owned_by": owned_by(name)}
        await send_json(writer, 200, out, "application/json", newline=True)
        return True
