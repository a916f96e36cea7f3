"""Anthropic's Messages API (``POST /v1/messages``), as Ollama's Anthropic layer serves it, through
the gateway: coding agents that speak it get caching, deduplication and queueing. The body becomes
the native request Ollama's layer builds (``gateway.schemas.anthropic``); the generation record is
framed back as its stream converter frames it: ``message_start``, ``content_block_start`` /
``content_block_delta`` (``thinking_delta``, ``text_delta``, ``input_json_delta``) /
``content_block_stop`` per block, ``message_delta`` with ``stop_reason`` and usage, ``message_stop``.
While a request waits, the heartbeat is Anthropic's own ``ping`` event."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from core.errors import ApiError
from core.generation import Answer, Chunk
from gateway import payloads
from gateway.http import anthropic_error, api_view
from gateway.schemas.anthropic import MessagesBody
from gateway.session import GenerationSession
from gateway.sse import frame, sse_response

PING = frame({"type": "ping"}, event="ping")


def stop_reason(done_reason: str, called_tools: bool) -> str:
    if called_tools:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens"}.get(
        done_reason, "stop_sequence" if done_reason else ""
    )


def _usage(final: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": int(final.get("prompt_eval_count", 0)),
        "output_tokens": int(final.get("eval_count", 0)),
    }


class MessageEvents:
    """anthropic.StreamConverter over the record's chunks."""

    def __init__(self, model: str, estimated_input: int) -> None:
        self.id = f"msg_{secrets.token_hex(12)}"
        self.model, self.estimated_input = model, estimated_input
        self.started = False
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.tools_sent: set[str] = set()
        self.out: list[bytes] = []

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.out.append(frame({"type": kind, **data}, event=kind))

    def _stop_block(self) -> None:
        self._event("content_block_stop", {"index": self.index})

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "usage": {"input_tokens": self.estimated_input, "output_tokens": 0},
        }  # fmt: skip
        self._event("message_start", {"message": message})

    def _end_thinking(self) -> None:
        if self.thinking_started and not self.thinking_done:
            self.thinking_done = True
            self._stop_block()
            self.index += 1

    def chunk(self, chunk: Chunk) -> bytes:
        self._start()
        if chunk.get("thinking") and not self.thinking_done:
            if self.text_started:
                self._stop_block()
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                block = {"type": "thinking", "thinking": ""}
                self._event("content_block_start", {"index": self.index, "content_block": block})
            delta = {"type": "thinking_delta", "thinking": chunk["thinking"]}
            self._event("content_block_delta", {"index": self.index, "delta": delta})
        if chunk.get("content"):
            self._end_thinking()
            if not self.text_started:
                self.text_started = True
                block = {"type": "text", "text": ""}
                self._event("content_block_start", {"index": self.index, "content_block": block})
            delta = {"type": "text_delta", "text": chunk["content"]}
            self._event("content_block_delta", {"index": self.index, "delta": delta})
        for call in chunk.get("tool_calls") or []:
            if call.get("id", "") in self.tools_sent:
                continue
            self._end_thinking()
            if self.text_started:
                self._stop_block()
                self.index += 1
                self.text_started = False
            function = call.get("function") or {}
            tool_block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": {},
            }
            if not tool_block["id"]:
                del tool_block["id"]
            self._event("content_block_start", {"index": self.index, "content_block": tool_block})
            arguments = json.dumps(function.get("arguments") or {}, separators=(",", ":"))
            self._event(
                "content_block_delta",
                {"index": self.index, "delta": {"type": "input_json_delta", "partial_json": arguments}},
            )
            self._stop_block()
            self.tools_sent.add(call.get("id", ""))
            self.index += 1
        return self.flush()

    def done(self, final: dict[str, Any]) -> bytes:
        self._start()
        if self.text_started or (self.thinking_started and not self.thinking_done):
            self._stop_block()
        delta: dict[str, Any] = {}
        reason = stop_reason(str(final.get("done_reason") or ""), bool(self.tools_sent))
        if reason:
            delta["stop_reason"] = reason
        self._event("message_delta", {"delta": delta, "usage": _usage(final)})
        self._event("message_stop", {})
        return self.flush()

    def flush(self) -> bytes:
        out, self.out = b"".join(self.out), []
        return out


def message_response(model: str, answer: Answer, final: dict[str, Any]) -> dict[str, Any]:
    """anthropic.ToMessagesResponse."""
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thought})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        function = call.get("function") or {}
        block = {
            "type": "tool_use",
            "id": call.get("id", ""),
            "name": function.get("name", ""),
            "input": function.get("arguments") or {},
        }
        content.append({k: v for k, v in block.items() if v != ""})
    out: dict[str, Any] = {
        "id": f"msg_{secrets.token_hex(12)}", "type": "message", "role": "assistant", "model": model,
        "content": content or None,
    }  # fmt: skip
    reason = stop_reason(str(final.get("done_reason") or ""), bool(answer.tool_calls))
    if reason:
        out["stop_reason"] = reason
    out["usage"] = _usage(final)
    return out


def error_event(error: ApiError) -> bytes:
    body = anthropic_error(error).content
    return frame(json.loads(body), event="error")


@api_view("POST", render=anthropic_error, body=MessagesBody)
async def messages(request: HttpRequest, body: MessagesBody) -> HttpResponseBase:
    """``POST /v1/messages``."""
    facts = await payloads.facts_of(body.model)
    payload = {**body.native(can_think=facts.thinks), "keep_alive": payloads.keep_alive(None)}
    spec = await payloads.spec_for(
        request, endpoint="chat", payload=payload, samples=body.samples(), streaming=body.stream
    )
    session = GenerationSession(spec)
    await session.start()
    if not body.stream:
        return JsonResponse(message_response(body.model, await session.answer(), session.final))
    events = MessageEvents(body.model, body.estimated_input_tokens())
    first = await session.first_events()

    async def stream() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield events.chunk(event.chunk)
            elif event.kind == "done":
                yield events.done(event.final)
            elif event.kind == "error":
                assert event.error is not None
                yield error_event(event.error)

    return sse_response(stream(), ping=PING, on_error=error_event)
