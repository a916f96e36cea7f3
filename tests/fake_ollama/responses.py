"""Ollama's /v1/responses (openai/responses.go, middleware/openai.go ResponsesMiddleware).

Stateless, as Ollama is: ``previous_response_id`` and ``conversation`` are not fields of Ollama's
request type, so they are ignored and every response says ``"previous_response_id": null``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .openai_layer import OpenAISink, tool_calls_to_openai
from .responses_requests import from_responses_request
from .rules import HttpError
from .wire import SSE_TYPE, Stream, send_json, unix_now, unix_of


def _echo_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in body.get("tools") or []:
        entry = {
            "type": t.get("type", ""),
            "name": t.get("name", ""),
            "description": t.get("description"),
            "strict": t.get("strict"),
            "parameters": t.get("parameters"),
        }
        if t.get("tools"):
            entry["tools"] = t["tools"]
        out.append(entry)
    return out


def _text_format(body: dict[str, Any]) -> dict[str, Any]:
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if not isinstance(fmt, dict):
        return {"type": "text"}
    return {k: fmt[k] for k in ("type", "name", "schema", "strict") if fmt.get(k) is not None}


def _response_object(
    body: dict[str, Any], rid: str, status: str, output: list, usage: Any, created: int
) -> dict:
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    reasoning_out = None
    if reasoning.get("effort") or reasoning.get("summary"):
        reasoning_out = {
            "effort": reasoning.get("effort") or None,
            "summary": reasoning.get("summary") or None,
        }
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "completed_at": None,
        "status": status,
        "incomplete_details": None,
        "model": body.get("model", ""),
        "previous_response_id": None,
        "instructions": body.get("instructions") or None,
        "output": output,
        "error": None,
        "tools": _echo_tools(body),
        "tool_choice": "auto",
        "truncation": body.get("truncation") or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": _text_format(body)},
        "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": body["temperature"] if body.get("temperature") is not None else 1.0,
        "reasoning": reasoning_out,
        "usage": usage,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": body.get("background") is True,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _usage(r: dict[str, Any]) -> dict[str, Any]:
    prompt, output = r.get("prompt_eval_count", 0), r.get("eval_count", 0)
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


class ResponsesSink(OpenAISink):
    """ResponsesWriter and ResponsesStreamConverter."""

    def __init__(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        super().__init__(writer)
        self.body = Stream(writer, SSE_TYPE, "Cache-Control: no-cache\r\nConnection: keep-alive\r\n")
        self.request = body
        self.id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.first = True
        self.output_index = 0
        self.content_started = False
        self.tool_calls_sent = False
        self.text = ""
        self.thinking = ""
        self.reasoning_id = ""
        self.sequence = 0
        self.completed: list[dict[str, Any]] = []

    async def _event(self, kind: str, data: dict[str, Any]) -> None:
        data = {**data, "type": kind, "sequence_number": self.sequence}
        self.sequence += 1
        await self.body.sse(kind, data)

    async def _finish_reasoning(self) -> None:
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
        await self._event(
            "response.reasoning_summary_text.done",
            {"item_id": rid, "output_index": index, "summary_index": 0, "text": text},
        )
        await self._event("response.output_item.done", {"output_index": index, "item": item})

    async def chunk(self, r: dict[str, Any]) -> None:
        message = r.get("message") or {}
        if self.first:
            self.first = False
            for kind in ("response.created", "response.in_progress"):
                response = _response_object(self.request, self.id, "in_progress", [], None, unix_now())
                await self._event(kind, {"response": response})
        if message.get("thinking"):
            if not self.reasoning_id:
                self.reasoning_id = f"rs_{random.randrange(999999)}"
                await self._event(
                    "response.output_item.added",
                    {
                        "output_index": self.output_index,
                        "item": {"id": self.reasoning_id, "type": "reasoning", "summary": []},
                    },
                )
            self.thinking += message["thinking"]
            await self._event(
                "response.reasoning_summary_text.delta",
                {
                    "item_id": self.reasoning_id,
                    "output_index": self.output_index,
                    "summary_index": 0,
                    "delta": message["thinking"],
                },
            )
        if message.get("tool_calls"):
            await self._finish_reasoning()
            calls = tool_calls_to_openai(message["tool_calls"])
            for i, tc in enumerate(calls):
                index, fid = self.output_index + i, f"fc_{random.randrange(999999)}_{i}"
                item = {
                    "id": fid,
                    "type": "function_call",
                    "status": "completed",
                    "call_id": tc["id"],
                    "name": tc["function"]["name"],
                    "arguments": tc["function"]["arguments"],
                }
                self.completed.append(item)
                await self._event(
                    "response.output_item.added",
                    {"output_index": index, "item": {**item, "status": "in_progress", "arguments": ""}},
                )
                await self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": fid, "output_index": index, "delta": item["arguments"]},
                )
                await self._event(
                    "response.function_call_arguments.done",
                    {"item_id": fid, "output_index": index, "arguments": item["arguments"]},
                )
                await self._event("response.output_item.done", {"output_index": index, "item": item})
            self.output_index += len(calls)
            self.tool_calls_sent = True
        elif not self.tool_calls_sent and message.get("content"):
            await self._finish_reasoning()
            if not self.content_started:
                self.content_started = True
                await self._event(
                    "response.output_item.added",
                    {
                        "output_index": self.output_index,
                        "item": {
                            "id": self.item_id,
                            "type": "message",
                            "status": "in_progress",
                            "role": "assistant",
                            "content": [],
                        },
                    },
                )
                await self._event(
                    "response.content_part.added",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    },
                )
            self.text += message["content"]
            await self._event(
                "response.output_text.delta",
                {
                    "item_id": self.item_id,
                    "output_index": self.output_index,
                    "content_index": 0,
                    "delta": message["content"],
                    "logprobs": [],
                },
            )
        if r.get("done"):
            await self._finish_reasoning()
            if not self.tool_calls_sent and self.content_started:
                part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
                await self._event(
                    "response.output_text.done",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "text": self.text,
                        "logprobs": [],
                    },
                )
                await self._event(
                    "response.content_part.done",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "part": part,
                    },
                )
                await self._event(
                    "response.output_item.done",
                    {"output_index": self.output_index, "item": _message_item(self.item_id, self.text)},
                )
            output = list(self.completed)
            if self.content_started:
                output.append(_message_item(self.item_id, self.text))
            response = _response_object(self.request, self.id, "completed", output, _usage(r), unix_now())
            response["completed_at"] = unix_now()
            await self._event("response.completed", {"response": response})

    async def whole(self, r: dict[str, Any]) -> None:
        """openai.ToResponse."""
        message = r.get("message") or {}
        output: list[dict[str, Any]] = []
        if message.get("thinking"):
            output.append(
                {
                    "id": f"rs_{self.id}",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": message["thinking"]}],
                    "encrypted_content": message["thinking"],
                }
            )
        if message.get("tool_calls"):
            for i, tc in enumerate(tool_calls_to_openai(message["tool_calls"])):
                output.append(
                    {
                        "id": f"fc_{self.id}_{i}",
                        "type": "function_call",
                        "status": "completed",
                        "call_id": tc["id"],
                        "name": tc["function"]["name"],
                        "arguments": tc["function"]["arguments"],
                    }
                )
        else:
            output.append(_message_item(self.item_id, message.get("content", "")))
        created = unix_of(r["created_at"]) if r.get("created_at") else unix_now()
        response = _response_object(self.request, self.id, "completed", output, _usage(r), created)
        if isinstance(response["reasoning"], dict):  # ToResponse omits the unset half
            response["reasoning"] = {k: v for k, v in response["reasoning"].items() if v is not None}
        response["completed_at"] = unix_now()
        await send_json(self.writer, 200, response, "application/json", newline=True)


class ResponsesLayer:
    """Mixin for FakeOllama."""

    async def _v1_responses(self, path: str, body: dict[str, Any], reader: Any, writer: Any) -> bool:
        sink = ResponsesSink(writer, body)
        try:
            native = from_responses_request(body)
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True
        return await self._serve_generation(
            "/api/chat", native, reader, writer, sink, surface=path, surface_body=body
        )
