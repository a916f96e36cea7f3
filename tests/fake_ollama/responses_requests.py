"""How Ollama reads a /v1/responses request (openai/responses.go FromResponsesRequest): the
native /api/chat request it builds. ``previous_response_id`` is not a field of it."""

from __future__ import annotations

import json
from typing import Any

from .openai_requests import decode_image_url, think_from_effort
from .rules import HttpError


def _content_item(raw: Any, where: str) -> dict[str, Any]:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("input_text", "input_image", "output_text", "input_file"):
        raise HttpError(400, f"{where}unknown content type: {kind or ''}")
    return raw


def _contents(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "input_text", "text": raw}]
    if not isinstance(raw, list):
        raise HttpError(400, f"{where}content must be a string or array")
    return [_content_item(item, f"{where}content[{i}]: ") for i, item in enumerate(raw)]


def _convert_contents(contents: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """convertResponsesContent."""
    text, images = "", []
    for c in contents:
        if c["type"] in ("input_text", "output_text"):
            text += c.get("text") or ""
        elif c["type"] == "input_image":
            if c.get("image_url"):
                images.append(decode_image_url(c["image_url"]))
        else:
            raise HttpError(400, "file inputs are not currently supported")
    return text, images


def _item(raw: Any, i: int) -> dict[str, Any]:
    where = f"input[{i}]: "
    if not isinstance(raw, dict):
        raise HttpError(400, f"{where}input item missing required 'type' field")
    kind = raw.get("type") or ("message" if raw.get("role") else "")
    if kind == "message":
        return {"kind": kind, "role": raw.get("role", ""), "content": _contents(raw.get("content"), where)}
    if kind == "function_call_output":
        output = raw.get("output")
        item = {"kind": kind, "call_id": raw.get("call_id", ""), "output": "", "items": []}
        if isinstance(output, str):
            item["output"] = output
        elif isinstance(output, list):
            item["items"] = [_content_item(o, f"{where}output[{j}]: ") for j, o in enumerate(output)]
            item["output"] = "".join(
                o.get("text") or "" for o in item["items"] if o["type"] in ("input_text", "output_text")
            )
        elif output is not None:
            raise HttpError(400, f"{where}output must be a string or array")
        return item
    if kind in ("function_call", "reasoning", "web_search_call"):
        return {"kind": kind, **raw}
    if not kind:
        raise HttpError(400, f"{where}input item missing required 'type' field")
    raise HttpError(400, f"{where}unknown input item type: {json.dumps(kind)}")


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


WEB_SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information.",
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {"query": {"type": "string", "description": "The search query."}},
        },
    },
}


def from_responses_request(body: dict[str, Any]) -> dict[str, Any]:
    """openai.FromResponsesRequest: the native /api/chat body."""
    raw_input = body.get("input")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items: list[dict[str, Any]] = []
    if isinstance(raw_input, str):
        if raw_input:
            messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        items = [_item(raw, i) for i, raw in enumerate(raw_input)]
    elif raw_input is not None:
        raise HttpError(400, "input must be a string or array")
    pending = ""
    for i, item in enumerate(items):
        kind = item["kind"]
        if kind == "reasoning":
            pending = item.get("encrypted_content") or ""
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
                item["role"] == "assistant"
                and output_id
                and last
                and last["role"] == "assistant"
                and last.get("tool_calls")
            ):
                if any(c.get("id") == output_id for c in last["tool_calls"]):
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
                raise HttpError(400, f"failed to parse function call arguments: {exc}") from None
            call = {
                "id": item.get("call_id", ""),
                "function": {"index": 0, "name": item.get("name", ""), "arguments": arguments},
            }
            if not call["id"]:
                del call["id"]
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                if pending:
                    messages[-1]["thinking"], pending = pending, ""
            else:
                msg = {"role": "assistant", "content": "", "tool_calls": [call]}
                if pending:
                    msg = {"role": "assistant", "content": "", "thinking": pending, "tool_calls": [call]}
                    pending = ""
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
    options: dict[str, Any] = {
        "temperature": body["temperature"] if body.get("temperature") is not None else 1.0
    }
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    think = think_from_effort(reasoning.get("effort"))
    tools: list[dict[str, Any]] = []
    request_tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    has_web_search = any(t.get("type") == "web_search" for t in request_tools)
    for t in request_tools:
        if t.get("type") == "web_search":
            tools.append(WEB_SEARCH_TOOL)
            continue
        tools += [x for x in _tools(t) if not (has_web_search and x["function"]["name"] == "web_search")]
    fmt = None
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        fmt = text_format.get("schema")
    native: dict[str, Any] = {
        "model": body.get("model", ""),
        "messages": messages,
        "stream": body.get("stream") is True,
    }
    if fmt is not None:
        native["format"] = fmt
    if tools:
        native["tools"] = tools
    native["options"] = dict(sorted(options.items()))
    if think is not None:
        native["think"] = think
    return native
