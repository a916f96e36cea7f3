"""OpenAI's Responses API as Ollama's layer reads it (``openai/responses.go`` FromResponsesRequest):
stateless, ``input`` a string or items (messages, function calls and their outputs, reasoning),
``instructions``, tools (namespaces expanded), reasoning effort, a JSON-schema ``text.format``.

``previous_response_id`` is not a field of Ollama's request: it is ignored, as there, and every
response says ``"previous_response_id": null``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field

from core.errors import BadRequest
from gateway.schemas.base import Json, JsonObject, Limit, ModelName, Strict, Text
from gateway.schemas.generation import Number
from gateway.schemas.openai import EFFORT_TO_THINK, Reasoning, decode_image_url

IGNORE_UNKNOWN = ConfigDict(**{**Strict.model_config, "extra": "ignore"})
CONTENT_TYPES = ("input_text", "input_image", "output_text", "input_file")


def _contents(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "input_text", "text": raw}]
    if not isinstance(raw, list):
        raise BadRequest(f"{where}content must be a string or array", code="invalid_input")
    for i, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in CONTENT_TYPES:
            raise BadRequest(f"{where}content[{i}]: unknown content type: {kind or ''}", code="invalid_input")
    return raw


def _convert_contents(contents: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """convertResponsesContent."""
    text, images = "", []
    for c in contents:
        if c["type"] in ("input_text", "output_text"):
            text += str(c.get("text") or "")
        elif c["type"] == "input_image":
            if c.get("image_url"):
                images.append(decode_image_url(str(c["image_url"])))
        else:
            raise BadRequest("file inputs are not currently supported", code="invalid_input")
    return text, images


def _item(raw: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"input[{i}]: "
    kind = raw.get("type") or ("message" if raw.get("role") else "")
    if kind == "message":
        return {"kind": kind, "role": raw.get("role", ""), "content": _contents(raw.get("content"), where)}
    if kind == "function_call_output":
        output = raw.get("output")
        item: dict[str, Any] = {"kind": kind, "call_id": raw.get("call_id", ""), "output": "", "items": []}
        if isinstance(output, str):
            item["output"] = output
        elif isinstance(output, list):
            item["items"] = _contents(output, where)
            item["output"] = "".join(
                str(o.get("text") or "") for o in item["items"] if o["type"] in ("input_text", "output_text")
            )
        elif output is not None:
            raise BadRequest(f"{where}output must be a string or array", code="invalid_input")
        return item
    if kind in ("function_call", "reasoning", "web_search_call"):
        return {"kind": kind, **raw}
    if not kind:
        raise BadRequest(f"{where}input item missing required 'type' field", code="invalid_input")
    raise BadRequest(f"{where}unknown input item type: {json.dumps(kind)}", code="invalid_input")


def _tools(tool: dict[str, Any]) -> list[dict[str, Any]]:
    """convertTools: a namespace expands to its members with qualified names."""
    if tool.get("type") == "namespace":
        out = []
        for member in tool.get("tools") or []:
            for t in _tools(member):
                prefix = f"{tool.get('name')}."
                if tool.get("name") and not t["function"]["name"].startswith(prefix):
                    t["function"]["name"] = prefix + t["function"]["name"]
                out.append(t)
        return out
    params = tool.get("parameters") or {}
    parameters: dict[str, Any] = {"type": params.get("type", "")}
    for key in ("$defs", "items", "required"):
        if params.get(key):
            parameters[key] = params[key]
    parameters["properties"] = params.get("properties")
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = parameters
    return [{"type": tool.get("type", ""), "function": function}]


class TextConfig(Strict):
    model_config = IGNORE_UNKNOWN
    format: JsonObject | None = None


class ResponsesBody(Strict):
    """``POST /v1/responses``."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = {
        "model": "invalid_model",
        "input": "invalid_input",
        "instructions": "invalid_input",
        "stream": "invalid_stream",
        "tools": "invalid_tools",
        "reasoning": "invalid_reasoning",
        "temperature": "invalid_options",
        "top_p": "invalid_options",
        "max_output_tokens": "invalid_options",
    }

    model: ModelName
    input: (
        Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")]
        | Annotated[list[JsonObject], Limit("LIMITS_MAX_MESSAGES")]
        | None
    ) = None
    instructions: Text | None = None
    stream: bool = False
    tools: list[JsonObject] | None = None
    tool_choice: Json = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    truncation: Text | None = None
    background: bool | None = None
    previous_response_id: Text | None = None  # ignored: Ollama's Responses API is stateless
    store: Json = None
    metadata: Json = None
    parallel_tool_calls: Json = None
    user: Json = None

    def native_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            if self.input:
                messages.append({"role": "user", "content": self.input})
            return messages
        items = [_item(raw, i) for i, raw in enumerate(self.input or [])]
        pending = ""
        for i, item in enumerate(items):
            kind = item["kind"]
            if kind == "reasoning":
                pending = str(item.get("encrypted_content") or "")
            elif kind == "message":
                text, images = _convert_contents(item["content"])
                msg: dict[str, Any] = {"role": item["role"], "content": text}
                if images:
                    msg["images"] = images
                if item["role"] == "assistant" and pending:
                    msg["thinking"], pending = pending, ""
                following = items[i + 1] if i + 1 < len(items) else None
                output_id = (
                    following["call_id"] if following and following["kind"] == "function_call_output" else ""
                )
                last = messages[-1] if messages else None
                if (
                    item["role"] == "assistant" and output_id and last and last["role"] == "assistant"
                    and last.get("tool_calls") and any(c.get("id") == output_id for c in last["tool_calls"])
                ):  # fmt: skip
                    if last["content"] and text:
                        last["content"] += "\n"
                    last["content"] += text
                    if images:
                        last["images"] = last.get("images", []) + images
                    if msg.get("thinking"):
                        last["thinking"] = msg["thinking"]
                    continue
                messages.append(msg)
            elif kind == "function_call":
                try:
                    arguments = json.loads(item["arguments"]) if item.get("arguments") else {}
                except ValueError as exc:
                    raise BadRequest(
                        f"failed to parse function call arguments: {exc}", code="invalid_input"
                    ) from None
                call: dict[str, Any] = {
                    "function": {"index": 0, "name": item.get("name", ""), "arguments": arguments}
                }
                if item.get("call_id"):
                    call = {"id": item["call_id"], **call}
                if messages and messages[-1]["role"] == "assistant":
                    messages[-1].setdefault("tool_calls", []).append(call)
                    if pending:
                        messages[-1]["thinking"], pending = pending, ""
                else:
                    msg = {"role": "assistant", "content": ""}
                    if pending:
                        msg["thinking"], pending = pending, ""
                    msg["tool_calls"] = [call]
                    messages.append(msg)
            elif kind == "function_call_output":
                text, images = (item["output"], []) if not item["items"] else _convert_contents(item["items"])
                msg = {"role": "tool", "content": text}
                if images:
                    msg["images"] = images
                if item["call_id"]:
                    msg["tool_call_id"] = item["call_id"]
                messages.append(msg)
        if pending:
            messages.append({"role": "assistant", "content": "", "thinking": pending})
        return messages

    def native(self) -> dict[str, Any]:
        """The native /api/chat request Ollama's layer builds (``stream`` added by the client)."""
        options: dict[str, Any] = {"temperature": self.temperature if self.temperature is not None else 1.0}
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.max_output_tokens is not None:
            options["num_predict"] = self.max_output_tokens
        out: dict[str, Any] = {"model": self.model, "messages": self.native_messages()}
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.get("type") == "json_schema":
            out["format"] = fmt.get("schema")
        tools = [t for tool in self.tools or [] if tool.get("type") != "web_search" for t in _tools(tool)]
        if tools:
            out["tools"] = tools
        out["options"] = dict(sorted(options.items()))
        effort = self.reasoning.effort if self.reasoning is not None else None
        if effort:
            out["think"] = EFFORT_TO_THINK[effort]
        return out

    def samples(self) -> bool:
        return self.temperature != 0
