"""Anthropic's Messages API as Ollama's Anthropic layer reads it (``anthropic/anthropic.go``,
``middleware/anthropic.go``), and the native /api/chat request each body becomes.

Content blocks: text, base64 images, tool_use / tool_result, thinking. ``thinking: {"type":
"enabled", "budget_tokens": N}`` becomes ``think: true`` (the budget is accepted, not enforced, as
there); ``tool_choice``, ``metadata`` and prompt-caching markers are ignored, as there.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field

from core.errors import BadRequest
from gateway.schemas.base import Json, JsonObject, Limit, ModelName, Strict, Text
from gateway.schemas.generation import Number

ANTHROPIC_CODES = {
    "model": "invalid_model",
    "messages": "invalid_messages",
    "max_tokens": "invalid_max_tokens",
    "stream": "invalid_stream",
    "system": "invalid_messages",
    "tools": "invalid_tools",
    "temperature": "invalid_options",
    "top_p": "invalid_options",
    "top_k": "invalid_options",
    "stop_sequences": "invalid_options",
}
IGNORE_UNKNOWN = ConfigDict(**{**Strict.model_config, "extra": "ignore"})


def _image(source: Any) -> str:
    if not isinstance(source, dict):
        raise BadRequest("invalid image source", code="invalid_image")
    if source.get("type") != "base64":
        raise BadRequest(
            f"invalid image source type: {source.get('type', '')}. Only base64 images are supported.",
            code="invalid_image",
        )
    try:
        data = base64.b64decode(str(source.get("data") or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid base64 image data: {exc}", code="invalid_image") from None
    return base64.b64encode(data).decode()


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
            images.append(_image(block.get("source")))
    return text, images


def convert_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    """anthropic.convertMessage: one Anthropic message as native messages (tool results first for
    a user turn, after the message otherwise)."""
    role = str(message.get("role", "")).lower()
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text, images, calls, thinking, results = "", [], [], "", []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text += str(block.get("text") or "")
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise BadRequest("tool_use block missing required 'id' field", code="invalid_messages")
            if kind == "tool_use" and not block.get("name"):
                raise BadRequest("tool_use block missing required 'name' field", code="invalid_messages")
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
        native: dict[str, Any] = {"role": role, "content": text}
        if thinking:
            native["thinking"] = thinking
        if images:
            native["images"] = images
        if calls:
            native["tool_calls"] = calls
        out.append(native)
    if role != "user":
        out += results
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("input_schema") or {}
    if not isinstance(schema, dict):
        raise BadRequest(
            f"invalid input_schema for tool {json.dumps(tool.get('name', ''))}", code="invalid_tools"
        )
    parameters: dict[str, Any] = {"type": schema.get("type", "")}
    for key in ("$defs", "items", "required"):
        if schema.get(key):
            parameters[key] = schema[key]
    parameters["properties"] = schema.get("properties")
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = parameters
    return {"type": "function", "function": function}


class ThinkingConfig(Strict):
    model_config = IGNORE_UNKNOWN
    type: Text
    budget_tokens: int | None = None


class MessagesBody(Strict):
    """``POST /v1/messages``."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = ANTHROPIC_CODES

    model: ModelName
    max_tokens: Annotated[int, Field(gt=0)]
    messages: Annotated[list[JsonObject], Limit("LIMITS_MAX_MESSAGES", minimum=1)]
    system: Text | list[JsonObject] | None = None
    stream: bool = False
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Number | None = None
    stop_sequences: list[Text] | None = None
    tools: list[JsonObject] | None = None
    tool_choice: Json = None  # accepted; Ollama's layer ignores it
    thinking: ThinkingConfig | None = None
    output_config: JsonObject | None = None
    metadata: Json = None

    def think(self) -> bool | str | None:
        if self.thinking is not None and self.thinking.type == "enabled":
            return True  # budget_tokens is accepted, not enforced, as in Ollama's layer
        if self.thinking is not None and self.thinking.type == "disabled":
            return False
        effort = str((self.output_config or {}).get("effort") or "").strip().lower()
        effort = "high" if effort == "xhigh" else effort
        return effort if effort in ("high", "medium", "low", "max") else None

    def native(self, *, can_think: bool) -> dict[str, Any]:
        """The native /api/chat request (``stream`` added by the client). ``think`` on a model that
        cannot think is dropped silently, as Ollama's Anthropic layer drops it."""
        messages: list[dict[str, Any]] = []
        if isinstance(self.system, str) and self.system:
            messages.append({"role": "system", "content": self.system})
        elif isinstance(self.system, list):
            joined = "".join(str(b.get("text", "")) for b in self.system if b.get("type") == "text")
            if joined:
                messages.append({"role": "system", "content": joined})
        for message in self.messages:
            messages += convert_message(message)
        options: dict[str, Any] = {"num_predict": self.max_tokens}
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.stop_sequences:
            options["stop"] = self.stop_sequences
        out: dict[str, Any] = {"model": self.model, "messages": messages}
        tools = [_tool(t) for t in self.tools or [] if not str(t.get("type", "")).startswith("web_search")]
        if tools:
            out["tools"] = tools
        out["options"] = dict(sorted(options.items()))
        think = self.think()
        if think is not None and (can_think or think is False):
            out["think"] = think
        return out

    def samples(self) -> bool:
        return self.temperature != 0

    def estimated_input_tokens(self) -> int:
        """anthropic.EstimateInputTokens: characters / 4 (message_start's usage before Ollama says)."""

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
                            total += len(json.dumps(block, separators=(",", ":")))
                return total
            return len(json.dumps(content, separators=(",", ":")))

        total = count(self.system)
        for message in self.messages:
            total += len(str(message.get("role", ""))) + count(message.get("content"))
        for tool in self.tools or []:
            total += len(tool.get("name") or "") + len(tool.get("description") or "")
            if tool.get("input_schema"):
                total += len(json.dumps(tool["input_schema"], separators=(",", ":")))
        tokens = total // 4
        return 1 if tokens == 0 else tokens
