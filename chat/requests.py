"""Parsing and validating request bodies, once, into typed values. Every violation is a 400 naming
the field (413 for an oversized body); nothing malformed reaches a service or Ollama."""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException

from chat.errors import BadRequest, PayloadTooLarge
from chatbot_site.config import keep_alive as keep_alive_problem

MAX_DEPTH = 32
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS = {"role", "content", "images", "tool_calls", "tool_name", "thinking"}
# Ollama model names: "name", "name:tag", "namespace/name:tag", "host/namespace/name:tag".
MODEL_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*){0,2}(:[A-Za-z0-9._\-]+)?$"
)

_number = (int, float)
# Ollama's generation options we pass through, each with its type and range.
OPTIONS: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "temperature": (_number, 0, 100),
    "top_p": (_number, 0, 1),
    "top_k": ((int,), 0, 1_000_000),
    "min_p": (_number, 0, 1),
    "typical_p": (_number, 0, 1),
    "seed": ((int,), -(2**63), 2**63 - 1),
    "num_predict": ((int,), -2, 1_000_000),
    "num_ctx": ((int,), 1, 10_000_000),
    "num_keep": ((int,), -1, 10_000_000),
    "num_batch": ((int,), 1, 1_000_000),
    "repeat_last_n": ((int,), -1, 10_000_000),
    "repeat_penalty": (_number, 0, 100),
    "presence_penalty": (_number, -100, 100),
    "frequency_penalty": (_number, -100, 100),
    "mirostat": ((int,), 0, 2),
    "mirostat_tau": (_number, 0, 100),
    "mirostat_eta": (_number, 0, 100),
    "penalize_newline": ((bool,), None, None),
    "stop": ((str, list), None, None),
}


def parse_json_body(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object; 413 if too large, 400 if it is not clean JSON."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(
            f"The request body exceeds {settings.LIMITS_MAX_BODY_BYTES} bytes.", code="body_too_large"
        ) from None
    except RawPostDataException:  # pragma: no cover - the body was consumed as a stream
        raise BadRequest("The request body could not be read.", code="invalid_body") from None
    if len(raw) > settings.LIMITS_MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"The request body exceeds {settings.LIMITS_MAX_BODY_BYTES} bytes.", code="body_too_large"
        )
    return loads_object(raw)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def loads_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no NaN/Infinity, no NUL bytes or lone surrogates, bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8.", code="invalid_json") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("The JSON is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    _check_clean(value, "body", 0)
    return value


def _check_clean(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"The JSON is nested deeper than {MAX_DEPTH} levels.", code="invalid_json")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{where} must be a finite number.", code="invalid_json")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_clean(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_clean(item, f"{where}[{index}]", depth + 1)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise BadRequest(f"{where} contains a NUL character.", code="invalid_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where} contains a lone surrogate.", code="invalid_text") from None


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request (``/api/chat-optimized`` and ``/api/chat-queue``)."""

    messages: list[dict[str, Any]]
    model: str
    stream: bool = False
    use_cache: bool = True
    priority: int = 0
    options: dict[str, Any] | None = None
    format: Any = None
    keep_alive: str | int | float = ""
    conversation_id: str | None = None  # a UUID, or "new" to start one

    def ollama_payload(self, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What goes to Ollama's /api/chat (``stream`` is added by the client)."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages if messages is not None else self.messages,
            "keep_alive": self.keep_alive,
        }
        if self.options:
            payload["options"] = self.options
        if self.format is not None:
            payload["format"] = self.format
        return payload


def parse_chat_request(body: dict[str, Any], *, fields: set[str]) -> ChatRequest:
    """Validate a chat body; ``fields`` are the top-level keys this endpoint accepts."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequest(
            f"Unknown field {unknown[0]!r}; accepted: {', '.join(sorted(fields))}.", code="unknown_field"
        )
    if "messages" not in body:
        raise BadRequest("Field 'messages' is required.", code="invalid_messages")
    messages = parse_messages(body["messages"])
    return ChatRequest(
        messages=messages,
        model=parse_model(body.get("model", settings.OLLAMA_MODEL)),
        stream=parse_bool(body, "stream", False),
        use_cache=parse_bool(body, "use_cache", True),
        priority=parse_priority(body.get("priority", 0)),
        options=parse_options(body.get("options")),
        format=parse_format(body.get("format")),
        keep_alive=parse_keep_alive(body.get("keep_alive", settings.OLLAMA_KEEP_ALIVE)),
        conversation_id=_conversation_id(body.get("conversation_id")),
    )


def parse_messages(value: Any, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequest(
            "Field 'messages' must be a list of {role, content} objects.", code="invalid_messages"
        )
    if not value and not allow_empty:
        raise BadRequest("Field 'messages' must not be empty.", code="invalid_messages")
    if len(value) > settings.LIMITS_MAX_MESSAGES:
        raise BadRequest(
            f"Field 'messages' has {len(value)} messages; "
            f"at most {settings.LIMITS_MAX_MESSAGES} are allowed.",
            code="too_many_messages",
        )
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with 'role' and 'content'.", code="invalid_messages")
        extra = sorted(set(message) - MESSAGE_FIELDS)
        if extra:
            raise BadRequest(f"{where} has unknown field {extra[0]!r}.", code="invalid_messages")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}.", code="invalid_role")
        content = message.get("content", "")
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string.", code="invalid_messages")
        if len(content) > settings.LIMITS_MAX_MESSAGE_CHARS:
            raise BadRequest(
                f"{where}.content has {len(content)} characters; at most "
                f"{settings.LIMITS_MAX_MESSAGE_CHARS} are allowed.",
                code="message_too_long",
            )
        for name in ("thinking", "tool_name"):
            if not isinstance(message.get(name, ""), str):
                raise BadRequest(f"{where}.{name} must be a string.", code="invalid_messages")
        tool_calls = message.get("tool_calls", [])
        if not (isinstance(tool_calls, list) and all(isinstance(x, dict) for x in tool_calls)):
            raise BadRequest(f"{where}.tool_calls must be a list of objects.", code="invalid_messages")
        images = message.get("images")
        if images is not None and not (isinstance(images, list) and all(isinstance(x, str) for x in images)):
            raise BadRequest(f"{where}.images must be a list of base64 strings.", code="invalid_messages")
        out.append(message)
    return out


def parse_model(value: Any) -> str:
    """A model name as Ollama spells them (no schemes, no '..')."""
    if not isinstance(value, str) or len(value) > 200 or ".." in value or not MODEL_NAME.match(value):
        raise BadRequest(
            "Field 'model' must be an Ollama model name such as 'llama3.2:1b'.", code="invalid_model"
        )
    return value


def parse_priority(value: Any) -> int:
    limit = settings.LIMITS_MAX_PRIORITY
    if isinstance(value, bool) or not isinstance(value, int) or not -limit <= value <= limit:
        raise BadRequest(
            f"Field 'priority' must be an integer from {-limit} to {limit} (higher runs first).",
            code="invalid_priority",
        )
    return value


def parse_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"Field {name!r} must be true or false.", code=f"invalid_{name}")
    return value


def parse_options(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("Field 'options' must be an object.", code="invalid_options")
    for name, item in value.items():
        if name not in OPTIONS:
            raise BadRequest(
                f"Unknown option {name!r}; accepted: {', '.join(sorted(OPTIONS))}.", code="invalid_options"
            )
        types, low, high = OPTIONS[name]
        ok = isinstance(item, types) and (bool not in types) == (not isinstance(item, bool))
        if name == "stop" and isinstance(item, list):
            ok = len(item) <= 16 and all(isinstance(s, str) for s in item)
        if ok and low is not None and not low <= item <= high:
            ok = False
        if not ok:
            where = f" from {low} to {high}" if low is not None else ""
            raise BadRequest(f"Option {name!r} has an invalid value{where}.", code="invalid_options")
    return value or None


def parse_format(value: Any) -> Any:
    if value is None or value == "json" or isinstance(value, dict):
        return value
    raise BadRequest("Field 'format' must be \"json\" or a JSON schema object.", code="invalid_format")


def parse_keep_alive(value: Any) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or keep_alive_problem(value):
        raise BadRequest(
            "Field 'keep_alive' must be seconds (a number) or a duration such as \"15m\".",
            code="invalid_keep_alive",
        )
    return value


def _conversation_id(value: Any) -> str | None:
    if value is None:
        return None
    if value == "new":
        return value
    return parse_conversation_id(value)


def parse_conversation_id(value: Any) -> str:
    """A conversation id: a UUID in its canonical form."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadRequest(
            'A conversation id must be a UUID (or "new" to start a conversation).',
            code="invalid_conversation_id",
        ) from None


def parse_request_id(value: str | None) -> uuid.UUID:
    """The ``requestId`` query parameter."""
    if not value:
        raise BadRequest("Query parameter 'requestId' is required.", code="missing_request_id")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest("Query parameter 'requestId' must be a UUID.", code="invalid_request_id") from None
