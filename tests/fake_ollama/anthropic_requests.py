"""How Ollama reads an Anthropic /v1/messages request (anthropic/anthropic.go FromMessagesRequest,
convertMessage, EstimateInputTokens, and the middleware's checks)."""

from __future__ import annotations

import base64
import json
from typing import Any

from .rules import HttpError, decode_b64
from .wire import dumps


def _image(source: Any) -> str:
    if not isinstance(source, dict):
        raise HttpError(400, "invalid image source")
    if source.get("type") != "base64":
        raise HttpError(
            400, f"invalid image source type: {source.get('type', '')}. Only base64 images are supported."
        )
    try:
        return base64.b64encode(decode_b64(source.get("data") or "")).decode()
    except HttpError as exc:
        raise HttpError(400, f"invalid base64 image data: {exc.message}") from None


def _tool_result(content: Any) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = "", []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text += block["text"]
        elif block.get("type") == "image":
            if not isinstance(block.get("source"), dict):
                raise HttpError(400, "invalid tool_result image source")
            images.append(_image(block["source"]))
    return text, images


def convert_message(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """anthropic.convertMessage."""
    role = str(msg.get("role", "")).lower()
    content = msg.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text, images, calls, thinking, results = "", [], [], "", []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            if block.get("source") is None:
                raise HttpError(400, "invalid image source")
            images.append(_image(block["source"]))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise HttpError(400, "tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise HttpError(400, "tool_use block missing required 'name' field")
            call: dict[str, Any] = {
                "function": {"index": 0, "name": block.get("name", ""), "arguments": block.get("input") or {}}
            }
            if block.get("id"):
                call = {"id": block["id"], **call}
            calls.append(call)
        elif kind in ("tool_result", "web_search_tool_result"):
            result_text, result_images = _tool_result(block.get("content"))
            result: dict[str, Any] = {"role": "tool", "content": result_text}
            if result_images:
                result["images"] = result_images
            if block.get("tool_use_id"):
                result["tool_call_id"] = block["tool_use_id"]
            results.append(result)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    out: list[dict[str, Any]] = []
    if role == "user":
        out += results
    if text or images or calls or thinking:
        message: dict[str, Any] = {"role": role, "content": text}
        if thinking:
            message["thinking"] = thinking
        if images:
            message["images"] = images
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    if role != "user":
        out += results
    return out


def from_messages_request(body: dict[str, Any]) -> dict[str, Any]:
    """AnthropicMessagesMiddleware's checks and anthropic.FromMessagesRequest."""
    if not body.get("model"):
        raise HttpError(400, "model is required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise HttpError(400, "max_tokens is required and must be positive")
    if not body.get("messages"):
        raise HttpError(400, "messages is required")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        joined = "".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")
        if joined:
            messages.append({"role": "system", "content": joined})
    for msg in body["messages"]:
        messages += convert_message(msg if isinstance(msg, dict) else {})
    options: dict[str, Any] = {"num_predict": max_tokens}
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(key) is not None:
            options[name] = body[key]
    if body.get("stop_sequences"):
        options["stop"] = body["stop_sequences"]
    tools = []
    request_tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    builtin = any(str(t.get("type", "")).startswith("web_search") for t in request_tools)
    for t in request_tools:
        if str(t.get("type", "")).startswith("web_search"):
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": "web_search",
                        "description": "Search the web for current information. "
                        "Use this to find up-to-date information about any topic.",
                        "parameters": {
                            "type": "object",
                            "required": ["query"],
                            "properties": {
                                "query": {
                                    "type": "string",
                                    "description": "The search query to look up on the web",
                                }
                            },
                        },
                    },
                }
            )
            continue
        if builtin and t.get("name") == "web_search":
            continue
        schema = t.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise HttpError(
                400,
                f"invalid input_schema for tool {json.dumps(t.get('name', ''))}: "
                f"json: cannot unmarshal {type(schema).__name__} into Go value of type "
                "api.ToolFunctionParameters",
            )
        schema = schema or {}
        parameters: dict[str, Any] = {"type": schema.get("type", "")}
        for key in ("$defs", "items", "required"):
            if schema.get(key):
                parameters[key] = schema[key]
        parameters["properties"] = schema.get("properties")
        function: dict[str, Any] = {"name": t.get("name", "")}
        if t.get("description"):
            function["description"] = t["description"]
        function["parameters"] = parameters
        tools.append({"type": "function", "function": function})
    think: Any = None
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
    effort = str((body.get("output_config") or {}).get("effort") or "").strip().lower()
    effort = "high" if effort == "xhigh" else effort
    if thinking.get("type") == "enabled":
        think = True  # budget_tokens is accepted, not enforced
    elif thinking.get("type") == "disabled":
        think = False
    elif effort in ("high", "medium", "low", "max"):
        think = effort
    native: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "stream": body.get("stream") is True,
    }
    if tools:
        native["tools"] = tools
    native["options"] = dict(sorted(options.items()))
    if think is not None:
        native["think"] = think
    return native


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """anthropic.EstimateCountTokens: characters / 4."""

    def count(content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return len(content)
        if isinstance(content, list):
            total = 0
            for block in content:
                if isinstance(block, dict):
                    total += len(block.get("text") or "") + len(block.get("thinking") or "")
                    if block.get("type") in ("tool_use", "tool_result"):
                        total += len(dumps(block))
            return total
        return len(dumps(content))

    total = count(body.get("system"))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            total += len(str(msg.get("role", ""))) + count(msg.get("content"))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            total += len(tool.get("name") or "") + len(tool.get("description") or "")
            total += len(dumps(tool["input_schema"])) if tool.get("input_schema") else 0
    tokens = total // 4
    return 1 if tokens == 0 and (body.get("messages") or body.get("system") is not None) else tokens
