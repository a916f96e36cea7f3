"""OpenAI's Responses API (``POST /v1/responses``), stateless as Ollama's: the body becomes the native
request Ollama's layer builds (``gateway.schemas.responses``), and the record is framed as its
ResponsesStreamConverter frames it: ``response.created``, ``response.in_progress``, reasoning summary
deltas, ``response.output_item.added`` / ``.done``, ``response.content_part.added`` / ``.done``,
``response.output_text.delta`` / ``.done``, function-call argument events, ``response.completed``;
every event numbered by ``sequence_number``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from core.generation import Answer, Chunk
from gateway import payloads
from gateway.schemas import ResponsesBody
from gateway.session import GenerationSession
from gateway.sse import frame, sse_response
from gateway.views.openai import error_frame, openai_view, tool_calls_to_openai


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _usage(final: dict[str, Any]) -> dict[str, Any]:
    prompt, output = int(final.get("prompt_eval_count", 0)), int(final.get("eval_count", 0))
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def response_object(
    body: ResponsesBody, rid: str, status: str, output: list[dict[str, Any]], usage: Any
) -> dict[str, Any]:
    """The ``response`` object as Ollama's layer fills it."""
    reasoning = None
    if body.reasoning is not None and body.reasoning.effort:
        reasoning = {"effort": body.reasoning.effort, "summary": None}
    text_format = {"type": "text"}
    if body.text is not None and body.text.format:
        text_format = {
            k: body.text.format[k] for k in ("type", "name", "schema", "strict") if k in body.text.format
        }
    tools = [
        {k: t.get(k) for k in ("type", "name", "description", "strict", "parameters")}
        | ({"tools": t["tools"]} if t.get("tools") else {})
        for t in body.tools or []
    ]
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "incomplete_details": None,
        "model": body.model,
        "previous_response_id": None,
        "instructions": body.instructions or None,
        "output": output,
        "error": None,
        "tools": tools,
        "tool_choice": "auto",
        "truncation": body.truncation or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": text_format},
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "reasoning": reasoning,
        "usage": usage,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "store": False,
        "background": body.background is True,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


class ResponseEvents:
    """ResponsesStreamConverter over the record's chunks."""

    def __init__(self, body: ResponsesBody) -> None:
        self.body = body
        self.id, self.item_id = _id("resp"), _id("msg")
        self.started = False
        self.output_index = 0
        self.content_started = self.tool_calls_sent = False
        self.text = self.thinking = self.reasoning_id = ""
        self.sequence = 0
        self.completed: list[dict[str, Any]] = []
        self.out: list[bytes] = []

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.out.append(frame({**data, "type": kind, "sequence_number": self.sequence}, event=kind))
        self.sequence += 1

    def _flush(self) -> bytes:
        out, self.out = b"".join(self.out), []
        return out

    def _start(self) -> None:
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                self._event(kind, {"response": response_object(self.body, self.id, "in_progress", [], None)})

    def _finish_reasoning(self) -> None:
        if not self.reasoning_id:
            return
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        self.completed.append(item)
        index, rid, text = self.output_index, self.reasoning_id, self.thinking
        self.thinking, self.reasoning_id = "", ""
        self.output_index += 1
        self._event(
            "response.reasoning_summary_text.done",
            {"item_id": rid, "output_index": index, "summary_index": 0, "text": text},
        )
        self._event("response.output_item.done", {"output_index": index, "item": item})

    def chunk(self, chunk: Chunk) -> bytes:
        self._start()
        if chunk.get("thinking"):
            if not self.reasoning_id:
                self.reasoning_id = _id("rs")
                item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
                self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
            self.thinking += chunk["thinking"]
            self._event(
                "response.reasoning_summary_text.delta",
                {"item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0,
                 "delta": chunk["thinking"]},
            )  # fmt: skip
        if chunk.get("tool_calls"):
            self._finish_reasoning()
            calls = tool_calls_to_openai(chunk["tool_calls"])
            for i, call in enumerate(calls):
                index, fid = self.output_index + i, f"{_id('fc')}_{i}"
                item = {
                    "id": fid, "type": "function_call", "status": "completed", "call_id": call["id"],
                    "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                }  # fmt: skip
                self.completed.append(item)
                added = {**item, "status": "in_progress", "arguments": ""}
                self._event("response.output_item.added", {"output_index": index, "item": added})
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": fid, "output_index": index, "delta": item["arguments"]},
                )
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": fid, "output_index": index, "arguments": item["arguments"]},
                )
                self._event("response.output_item.done", {"output_index": index, "item": item})
            self.output_index += len(calls)
            self.tool_calls_sent = True
        elif not self.tool_calls_sent and chunk.get("content"):
            self._finish_reasoning()
            if not self.content_started:
                self.content_started = True
                item = {
                    "id": self.item_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                self._event(
                    "response.content_part.added",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "part": part,
                    },
                )
            self.text += chunk["content"]
            self._event(
                "response.output_text.delta",
                {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0,
                 "delta": chunk["content"], "logprobs": []},
            )  # fmt: skip
        return self._flush()

    def done(self, final: dict[str, Any]) -> bytes:
        self._start()
        self._finish_reasoning()
        if not self.tool_calls_sent and self.content_started:
            where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            self._event("response.output_text.done", {**where, "text": self.text, "logprobs": []})
            self._event("response.content_part.done", {**where, "part": part})
            self._event(
                "response.output_item.done",
                {"output_index": self.output_index, "item": _message_item(self.item_id, self.text)},
            )
        output = list(self.completed)
        if self.content_started:
            output.append(_message_item(self.item_id, self.text))
        response = response_object(self.body, self.id, "completed", output, _usage(final))
        self._event("response.completed", {"response": response})
        return self._flush()


def whole_response(body: ResponsesBody, answer: Answer, final: dict[str, Any]) -> dict[str, Any]:
    """openai.ToResponse."""
    rid = _id("resp")
    output: list[dict[str, Any]] = []
    if answer.thinking:
        output.append(
            {
                "id": f"rs_{rid}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": answer.thought}],
                "encrypted_content": answer.thought,
            }
        )
    if answer.tool_calls:
        for i, call in enumerate(tool_calls_to_openai(answer.tool_calls)):
            output.append(
                {
                    "id": f"fc_{rid}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
            )
    else:
        output.append(_message_item(_id("msg"), answer.text))
    response = response_object(body, rid, "completed", output, _usage(final))
    if isinstance(response["reasoning"], dict):  # ToResponse omits the unset half
        response["reasoning"] = {k: v for k, v in response["reasoning"].items() if v is not None}
    return response


@openai_view("POST", body=ResponsesBody)
async def responses(request: HttpRequest, body: ResponsesBody) -> HttpResponseBase:
    """``POST /v1/responses``."""
    payload = {**body.native(), "keep_alive": payloads.keep_alive(None)}
    spec = await payloads.spec_for(
        request, endpoint="chat", payload=payload, samples=body.samples(), streaming=body.stream
    )
    session = GenerationSession(spec)
    await session.start()
    if not body.stream:
        return JsonResponse(whole_response(body, await session.answer(), session.final))
    events = ResponseEvents(body)
    first = await session.first_events()

    async def stream() -> AsyncIterator[bytes]:
        async for event in session.events(first):
            if event.kind == "chunk":
                yield events.chunk(event.chunk)
            elif event.kind == "done":
                yield events.done(event.final)
            elif event.kind == "error":
                assert event.error is not None
                yield error_frame(event.error)

    return sse_response(stream(), on_error=error_frame)
