"""Ollama's Anthropic-compatible /v1/messages (anthropic/anthropic.go, middleware/anthropic.go).

Thinking on a model without the capability is dropped silently here ("relax_thinking");
``budget_tokens`` is accepted and not enforced; ``tool_choice`` and ``metadata`` are ignored; no
``ping`` event is ever written (the type exists, the stream converter never emits it); other
paths such as /v1/messages/count_tokens are gin's plain 404."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from .anthropic_requests import estimate_input_tokens, from_messages_request
from .rules import HttpError
from .sinks import CompatSink
from .wire import SSE_TYPE, Stream, dumps, send_json


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


def _stop_reason(reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens"}.get(reason, "stop_sequence" if reason else "")


class MessagesSink(CompatSink):
    """AnthropicWriter and anthropic.StreamConverter."""

    def __init__(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        super().__init__(writer)
        self.body = Stream(writer, SSE_TYPE, "Cache-Control: no-cache\r\nConnection: keep-alive\r\n")
        self.id = f"msg_{secrets.token_hex(12)}"
        self.model = body.get("model", "")
        self.estimate = estimate_input_tokens(body)
        self.first = True
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.tools_sent: set[str] = set()

    async def error(self, status: int, message: str) -> None:
        await send_json(
            self.writer, status, anthropic_error(status, message), "application/json", newline=True
        )

    async def _event(self, kind: str, data: dict[str, Any]) -> None:
        await self.body.sse(kind, data)

    async def _stop_block(self) -> None:
        await self._event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    async def chunk(self, r: dict[str, Any]) -> None:
        message = r.get("message") or {}
        if self.first:
            self.first = False
            tokens = r.get("prompt_eval_count") or self.estimate
            await self._event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "usage": {"input_tokens": tokens, "output_tokens": 0},
                    },
                },
            )
        if message.get("thinking") and not self.thinking_done:
            if self.text_started:
                await self._stop_block()
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                await self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": self.index,
                        "content_block": {"type": "thinking", "thinking": ""},
                    },
                )
            await self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "thinking_delta", "thinking": message["thinking"]},
                },
            )
        if message.get("content"):
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                await self._stop_block()
                self.index += 1
            if not self.text_started:
                self.text_started = True
                await self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": self.index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            await self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "text_delta", "text": message["content"]},
                },
            )
        for call in message.get("tool_calls") or []:
            if call.get("id", "") in self.tools_sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                await self._stop_block()
                self.index += 1
            if self.text_started:
                await self._stop_block()
                self.index += 1
                self.text_started = False
            function = call.get("function") or {}
            block = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": {},
            }
            if not block["id"]:
                del block["id"]
            await self._event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
            await self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": dumps(function.get("arguments") or {}),
                    },
                },
            )
            await self._stop_block()
            self.tools_sent.add(call.get("id", ""))
            self.index += 1
        if r.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                await self._stop_block()
            delta: dict[str, Any] = {}
            reason = _stop_reason(r.get("done_reason") or "", bool(self.tools_sent))
            if reason:
                delta["stop_reason"] = reason
            await self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": delta,
                    "usage": {
                        "input_tokens": r.get("prompt_eval_count", 0),
                        "output_tokens": r.get("eval_count", 0),
                    },
                },
            )
            await self._event("message_stop", {"type": "message_stop"})

    async def whole(self, r: dict[str, Any]) -> None:
        """anthropic.ToMessagesResponse."""
        message = r.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("thinking"):
            content.append({"type": "thinking", "thinking": message["thinking"]})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            block = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": function.get("arguments") or {},
            }
            content.append({k: v for k, v in block.items() if v != ""})
        out: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": r.get("model", ""),
            "content": content or None,
        }
        reason = _stop_reason(r.get("done_reason") or "", bool(message.get("tool_calls")))
        if reason:
            out["stop_reason"] = reason
        out["usage"] = {
            "input_tokens": r.get("prompt_eval_count", 0),
            "output_tokens": r.get("eval_count", 0),
        }
        await send_json(self.writer, 200, out, "application/json", newline=True)


class AnthropicLayer:
    """Mixin for FakeOllama."""

    async def _v1_messages(self, path: str, body: dict[str, Any], reader: Any, writer: Any) -> bool:
        sink = MessagesSink(writer, body)
        try:
            native = from_messages_request(body)
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True
        return await self._serve_generation(
            "/api/chat", native, reader, writer, sink, surface=path, surface_body=body, relax_thinking=True
        )
