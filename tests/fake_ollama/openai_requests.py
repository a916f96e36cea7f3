"""How Ollama's OpenAI layer reads a request (openai/openai.go FromChatRequest,
FromCompleteRequest, and the middleware's checks): the native request it builds."""

from __future__ import annotations

import base64
import json
from typing import Any

from .rules import HttpError, decode_b64, go_type, json_kind


def _bind(struct: str, field: str, value: Any, go: str) -> HttpError:
    return HttpError(
        400, f"json: cannot unmarshal {json_kind(value)} into Go struct field {struct}.{field} of type {go}"
    )


def _check(struct: str, body: dict[str, Any], fields: dict[str, tuple[type | tuple[type, ...], str]]) -> None:
    for name, (kinds, go) in fields.items():
        value = body.get(name)
        if value is None:
            continue
        wrong = isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))
        if wrong or not isinstance(value, kinds):
            raise _bind(struct, name, value, go)


def decode_image_url(url: str) -> str:
    """openai.decodeImageURL; returns the image as Ollama re-encodes it (standard base64)."""
    if url.startswith(("http://", "https://")):
        raise HttpError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        data = url[len("data:;base64,") :]
    else:
        prefix = next(
            (
                f"data:image/{t};base64,"
                for t in ("jpeg", "jpg", "png", "webp")
                if url.startswith(f"data:image/{t};base64,")
            ),
            None,
        )
        if prefix is None:
            raise HttpError(400, "invalid image input")
        data = url[len(prefix) :]
    try:
        return base64.b64encode(decode_b64(data)).decode()
    except HttpError:
        raise HttpError(400, "invalid image input") from None


def native_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """openai.FromCompletionToolCall."""
    out = []
    for call in calls or []:
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except (TypeError, ValueError):
            raise HttpError(400, "invalid tool call arguments") from None
        entry: dict[str, Any] = {
            "function": {"index": 0, "name": function.get("name", ""), "arguments": arguments}
        }
        if call.get("id"):
            entry = {"id": call["id"], **entry}
        out.append(entry)
    return out


def native_message(role: str, content: str = "", **fields: Any) -> dict[str, Any]:
    """api.Message as it marshals (content always, the rest when non-empty)."""
    out: dict[str, Any] = {"role": role, "content": content}
    for key in ("thinking", "images", "tool_calls", "tool_name", "tool_call_id"):
        if fields.get(key):
            out[key] = fields[key]
    return out


def think_from_effort(effort: Any) -> Any:
    """openai.thinkFromReasoningEffort."""
    if effort in (None, ""):
        return None
    mapping = {
        "none": False,
        "minimal": "low",
        "low": "low",
        "medium": "medium",
        "high": "high",
        "max": "max",
        "xhigh": "max",
        "ultra": "max",
    }
    if effort not in mapping:
        raise HttpError(
            400,
            f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")',
        )
    return mapping[effort]


def native_tools(tools: Any) -> list[dict[str, Any]]:
    """[]api.Tool as Ollama re-encodes them (unknown fields dropped)."""
    out = []
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function") or {}
        parameters = function.get("parameters") or {}
        params: dict[str, Any] = {"type": parameters.get("type", "")}
        for key in ("$defs", "items", "required"):
            if parameters.get(key):
                params[key] = parameters[key]
        params["properties"] = parameters.get("properties")
        fn: dict[str, Any] = {"name": function.get("name", "")}
        if function.get("description"):
            fn["description"] = function["description"]
        fn["parameters"] = params
        entry: dict[str, Any] = {"type": tool.get("type", "")}
        if tool.get("items") is not None:
            entry["items"] = tool["items"]
        entry["function"] = fn
        out.append(entry)
    return out


def from_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """openai.FromChatRequest plus ChatMiddleware's checks: the native /api/chat body."""
    struct = "ChatCompletionRequest"
    _check(
        struct,
        body,
        {
            "model": (str, "string"),
            "messages": (list, "[]openai.Message"),
            "stream": (bool, "bool"),
            "stream_options": (dict, "openai.StreamOptions"),
            "max_tokens": (int, "int"),
            "seed": (int, "int"),
            "temperature": ((int, float), "float64"),
            "top_p": ((int, float), "float64"),
            "frequency_penalty": ((int, float), "float64"),
            "presence_penalty": ((int, float), "float64"),
            "tools": (list, "[]api.Tool"),
            "logprobs": (bool, "bool"),
            "top_logprobs": (int, "int"),
            "reasoning_effort": (str, "string"),
            "response_format": (dict, "openai.ResponseFormat"),
        },
    )
    messages_in = body.get("messages") or []
    if not messages_in:
        raise HttpError(400, "[] is too short - 'messages'")
    messages: list[dict[str, Any]] = []
    for msg in messages_in:
        if not isinstance(msg, dict):
            raise _bind(struct, "messages", msg, "openai.Message")
        role = msg.get("role", "")
        tool_name = ""
        if str(role).lower() == "tool":
            tool_name = msg.get("name") or ""
            if not tool_name and msg.get("tool_call_id"):
                tool_name = next(
                    (
                        tc.get("function", {}).get("name", "")
                        for m in reversed(messages_in)
                        if isinstance(m, dict)
                        for tc in m.get("tool_calls") or []
                        if tc.get("id") == msg["tool_call_id"]
                    ),
                    "",
                )
        content = msg.get("content")
        reasoning = msg.get("reasoning") or ""
        if isinstance(content, str):
            messages.append(
                native_message(
                    role,
                    content,
                    thinking=reasoning,
                    tool_calls=native_tool_calls(msg.get("tool_calls")),
                    tool_name=tool_name,
                    tool_call_id=msg.get("tool_call_id"),
                )
            )
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise HttpError(400, "invalid message format")
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise HttpError(400, "invalid message format")
                    messages.append(native_message(role, part["text"]))
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise HttpError(400, "invalid message format")
                    messages.append(native_message(role, images=[decode_image_url(url)]))
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise HttpError(400, "invalid input_audio format")
                    if not isinstance(audio.get("data"), str):
                        raise HttpError(400, "invalid input_audio format: missing data")
                    messages.append(native_message(role, images=[audio["data"]]))
                else:
                    raise HttpError(400, "invalid message format")
            if messages and msg.get("tool_calls"):
                last = messages[-1]
                last.update(
                    native_message(
                        last["role"],
                        last["content"],
                        images=last.get("images"),
                        thinking=reasoning,
                        tool_calls=native_tool_calls(msg["tool_calls"]),
                        tool_name=tool_name,
                        tool_call_id=msg.get("tool_call_id"),
                    )
                )
        else:
            if msg.get("tool_calls") is None:
                raise HttpError(400, f"invalid message content type: {go_type(content)}")
            messages.append(
                native_message(
                    role,
                    thinking=reasoning,
                    tool_calls=native_tool_calls(msg["tool_calls"]),
                    tool_call_id=msg.get("tool_call_id"),
                )
            )
    options: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)] or None
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    options["temperature"] = body["temperature"] if body.get("temperature") is not None else 1.0
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            options[key] = body[key]
    options["top_p"] = body["top_p"] if body.get("top_p") is not None else 1.0
    fmt: Any = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = str(response_format.get("type", "")).strip().lower()
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
            fmt = response_format["json_schema"].get("schema")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    think = think_from_effort(effort)
    native: dict[str, Any] = {
        "model": body.get("model", ""),
        "messages": messages,
        "stream": body.get("stream") is True,
    }
    if fmt is not None:
        native["format"] = fmt
    tools = native_tools(body.get("tools"))
    if tools:
        native["tools"] = tools
    native["options"] = dict(sorted(options.items()))
    if think is not None:
        native["think"] = think
    if body.get("_debug_render_only"):
        native["_debug_render_only"] = True
    if body.get("logprobs") is True:
        native["logprobs"] = True
    if body.get("top_logprobs"):
        native["top_logprobs"] = body["top_logprobs"]
    return native


def from_completion_request(body: dict[str, Any]) -> dict[str, Any]:
    """openai.FromCompleteRequest: the native /api/generate body."""
    _check(
        "CompletionRequest",
        body,
        {
            "model": (str, "string"),
            "prompt": (str, "string"),
            "suffix": (str, "string"),
            "stream": (bool, "bool"),
            "max_tokens": (int, "int"),
            "seed": (int, "int"),
            "temperature": ((int, float), "float32"),
            "top_p": ((int, float), "float32"),
            "frequency_penalty": ((int, float), "float32"),
            "presence_penalty": ((int, float), "float32"),
            "logprobs": (int, "int"),
            "stream_options": (dict, "openai.StreamOptions"),
        },
    )
    options: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        for s in stop:
            if not isinstance(s, str):
                raise HttpError(400, f"invalid type for 'stop' field: {go_type(s)}")
        options["stop"] = list(stop) or None
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    options["temperature"] = body["temperature"] if body.get("temperature") is not None else 1.0
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    options["frequency_penalty"] = body.get("frequency_penalty") or 0.0
    options["presence_penalty"] = body.get("presence_penalty") or 0.0
    options["top_p"] = body.get("top_p") or 1.0
    native: dict[str, Any] = {
        "model": body.get("model", ""),
        "prompt": body.get("prompt") or "",
        "suffix": body.get("suffix") or "",
        "system": "",
        "template": "",
        "stream": body.get("stream") is True,
        "options": dict(sorted(options.items())),
    }
    if body.get("_debug_render_only"):
        native["_debug_render_only"] = True
    logprobs = body.get("logprobs")
    if isinstance(logprobs, int) and logprobs > 0:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    return native
