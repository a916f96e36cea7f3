"""ShouldBindJSON for Ollama's chat and generate requests: field types with encoding/json's
error texts, and the values the handlers read."""

from __future__ import annotations

from typing import Any

from .rules import HttpError, bind_error, decode_b64, parse_keep_alive, parse_think


def _check_images(images: Any, where: str, struct: str) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list):
        raise bind_error(struct, where, images, "[]api.ImageData")
    for image in images:
        if not isinstance(image, str):
            raise bind_error(struct, where, image, "api.ImageData")
        decode_b64(image)
    return images


def bind_generation(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """ShouldBindJSON for api.ChatRequest / api.GenerateRequest: the fields' types, and the values
    the handlers read. Raises HttpError(400) with encoding/json's texts."""
    chat = path == "/api/chat"
    struct = "ChatRequest" if chat else "GenerateRequest"
    out: dict[str, Any] = {"images": []}
    if chat:
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise bind_error(struct, "messages", messages, "[]api.Message")
        for message in messages or []:
            if not isinstance(message, dict):
                raise bind_error(struct, "messages", message, "api.Message")
            for key in ("role", "content", "thinking", "tool_name", "tool_call_id"):
                value = message.get(key)
                if value is not None and not isinstance(value, str):
                    raise bind_error("Message", f"messages.{key}", value, "string")
            out["images"].append(_check_images(message.get("images"), "messages.images", "Message"))
            calls = message.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                raise bind_error("Message", "messages.tool_calls", calls, "[]api.ToolCall")
            for call in calls or []:
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                if arguments is not None and not isinstance(arguments, dict):
                    raise bind_error(
                        struct,
                        "messages.tool_calls.function.arguments",
                        arguments,
                        "api.ToolCallFunctionArguments",
                    )
        out["messages"] = messages or []
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bind_error(struct, "tools", tools, "api.Tools")
        out["tools"] = [t for t in tools or [] if isinstance(t, dict)]
    else:
        for key in ("prompt", "suffix", "system", "template"):
            value = body.get(key)
            if value is not None and not isinstance(value, str):
                raise bind_error(struct, key, value, "string")
        out["images"].append(_check_images(body.get("images"), "images", struct))
    for key, kind in (
        ("stream", bool),
        ("logprobs", bool),
        ("raw", bool),
        ("truncate", bool),
        ("shift", bool),
    ):
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            raise bind_error(struct, key, value, "bool")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise bind_error(struct, "options", options, "map[string]interface {}")
    top = body.get("top_logprobs", 0)
    if top is None:
        top = 0
    if isinstance(top, bool) or not isinstance(top, (int, float)) or int(top) != top:
        raise bind_error(struct, "top_logprobs", top, "int")
    out["think"] = parse_think(body.get("think"))
    out["keep_alive"] = parse_keep_alive(body.get("keep_alive"))
    if not 0 <= top <= 20:
        raise HttpError(400, "top_logprobs must be between 0 and 20")
    out["top_logprobs"] = int(top)
    out["options"] = options or {}
    return out


def render(path: str, body: dict[str, Any]) -> str:
    """A stand-in for the chat template, for _debug_render_only."""
    if path == "/api/chat":
        parts = [
            f"<|{str(m.get('role', '')).lower()}|>{m.get('content') or ''}\n"
            for m in body.get("messages") or []
        ]
        return "".join(parts) + "<|assistant|>"
    system = f"<|system|>{body['system']}\n" if body.get("system") else ""
    return f"{system}<|user|>{body.get('prompt') or ''}\n<|assistant|>"
