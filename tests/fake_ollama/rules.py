"""How Ollama reads a request, and the emulator's deterministic model behind it.

Request rules follow Ollama's source: ``api/types.go`` (``ThinkValue``, ``Options.FromMap``,
``Duration``, ``Runner``), ``server/routes.go`` and ``server/sched.go`` (``needsReload``). What the
"model" says is derived from a hash of the request, so a test can predict every token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import re
import secrets
import string
import struct
from typing import Any

VOCAB = (
    "the a model answer token stream cache queue quick brown fox jumps over lazy dog rust python "
    "django channel worker light fast fair local shared memory reply with every word in order"
).split()
VERSION = "0.12.6"  # what /api/version says (the source read is v0.33.0-rc2; a gateway test pins this)
FAULTS = ("refuse", "hang", "http500", "busy", "stall", "malformed", "error_line", "cut")
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
MULTIMODAL_REFUSED = "Multimodal data provided, but model does not support multimodal requests."
THINK_LEVELS = {"low": 0.5, "medium": 1.0, "high": 2.0, "max": 3.0}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- deterministic replies ----------------------------------------------------------------------


def request_signature(path: str, body: dict[str, Any]) -> str:
    """What identifies a generation request (for per-request call counts). Fields that change the
    answer but most requests lack (think, tools, suffix, images...) count only when present."""
    subject = {
        "path": path,
        "model": body.get("model"),
        "messages": body.get("messages"),
        "prompt": body.get("prompt"),
        "system": body.get("system"),
        "options": body.get("options"),
        "format": body.get("format"),
    }
    for key in ("think", "tools", "suffix", "images", "raw", "template", "input", "instructions"):
        if body.get(key) is not None and body[key] not in ([], "", {}):
            subject[key] = body[key]
    return hashlib.sha256(json.dumps(subject, sort_keys=True).encode()).hexdigest()


def _words(seed: bytes, count: int) -> list[str]:
    tokens = []
    for i in range(count):
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        word = VOCAB[int.from_bytes(digest[:4], "big") % len(VOCAB)]
        tokens.append(word if i == 0 else " " + word)
    return tokens


def reply_tokens(body: dict[str, Any], count: int) -> list[str]:
    """The deterministic reply for a request: ``count`` tokens drawn from its hash."""
    return _words(request_signature("", body).encode(), count)


def thinking_tokens(body: dict[str, Any], count: int) -> list[str]:
    """The deterministic thinking a thinking model streams before its reply."""
    return _words(b"think\0" + request_signature("", body).encode(), count)


def thinking_count(think: Any, base: int) -> int:
    """How many thinking tokens: the emulator's ``think_token_count`` scaled by the level."""
    level = "medium" if think is True else think
    return max(1, round(base * THINK_LEVELS.get(level, 1.0)))


def prompt_words(body: dict[str, Any]) -> int:
    if body.get("messages"):
        text = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt") or "")
    return max(1, len(text.split()))


def token_logprob(token: str, seed: str, top: int) -> dict[str, Any]:
    """One entry of ``logprobs`` as api.Logprob marshals it (bytes omitted for an empty token)."""
    digest = hashlib.sha256(seed.encode()).digest()
    value = -round(0.001 + int.from_bytes(digest[:4], "big") / 2**32 * 2.5, 6)
    entry: dict[str, Any] = {"token": token, "logprob": value}
    if token:
        entry["bytes"] = list(token.encode())
    if top > 0:
        prefix = " " if token.startswith(" ") else ""
        alternatives = [dict(entry)]
        seen, i = {token}, 0
        while len(alternatives) < top:
            word = prefix + VOCAB[(digest[4 + i % 28] + i) % len(VOCAB)]
            i += 1
            if word in seen:
                continue
            seen.add(word)
            step = round(value - 0.75 * len(alternatives) - digest[i % 32] / 1000, 6)
            alternatives.append({"token": word, "logprob": step, "bytes": list(word.encode())})
        entry["top_logprobs"] = alternatives
    return entry


# --- tool calls ---------------------------------------------------------------------------------


def tool_call_id() -> str:
    """server/routes.go toolCallId: ``call_`` and 8 random [a-z0-9], new for every generation."""
    return "call_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _hash(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")


def _resolve_ref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


def _value(schema: Any, seed: str, depth: int = 0, root: Any = None) -> Any:
    schema = schema if isinstance(schema, dict) else {}
    root = root if isinstance(root, dict) else schema
    schema = _resolve_ref(schema, root)
    h = _hash(seed)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][h % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            pick = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
            return _value(pick, seed, depth, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
        low, high = (int(low), int(high)) if kind == "integer" else (low, high)
        if kind == "integer":
            return low + h % max(high - low, 1)
        return round(low + (h % 10_000) / 10_000 * (high - low), 2)
    if kind == "boolean":
        return h % 2 == 0
    if kind == "null":
        return None
    if kind == "array":
        return [_value(schema.get("items"), seed + "[0]", depth + 1, root)] if depth < 4 else []
    if kind == "object":
        return tool_arguments(schema, seed, depth + 1, root) if depth < 4 else {}
    return VOCAB[h % len(VOCAB)]


def tool_arguments(parameters: Any, seed: str, depth: int = 0, root: Any = None) -> dict[str, Any]:
    """Arguments for a function from its JSON-schema parameters: every property, in order;
    strings from the vocabulary, numbers and booleans from the hash, enums by the hash."""
    root = root if isinstance(root, dict) else parameters
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {name: _value(prop, f"{seed}\0{name}", depth, root) for name, prop in properties.items()}


def format_tokens(body: dict[str, Any], count: int) -> list[str]:
    """The reply under structured outputs: a JSON document (``"json"``: an object holding the
    usual reply; a schema: a value built from it), streamed a word at a time."""
    fmt = body.get("format")
    if isinstance(fmt, dict):
        value = _value(fmt, request_signature("", body), 0, fmt)
    else:
        value = {"answer": "".join(reply_tokens(body, count))}
    return re.findall(r"\s*\S+", json.dumps(value, ensure_ascii=False))


def content_tokens(body: dict[str, Any], count: int) -> list[str]:
    """What a reply's content is: ``format_tokens`` under a format, else ``reply_tokens``."""
    fmt = body.get("format")
    return format_tokens(body, count) if fmt == "json" or isinstance(fmt, dict) else reply_tokens(body, count)


def plan_tool_calls(body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The calls a tools-capable model makes: the first ``count`` tools in order (cycling)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    signature = request_signature("", body)
    calls = []
    for index in range(count if tools else 0):
        function = tools[index % len(tools)].get("function") or {}
        name = function.get("name", "")
        arguments = tool_arguments(function.get("parameters"), f"{signature}\0{index}\0{name}")
        calls.append(
            {"id": tool_call_id(), "function": {"index": index, "name": name, "arguments": arguments}}
        )
    return calls


# --- request fields -----------------------------------------------------------------------------


def go_type(value: Any) -> str:
    """Go's %T of a JSON value decoded into ``any``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def json_kind(value: Any) -> str:
    """The JSON type name encoding/json puts in an UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def bind_error(struct: str, field: str, value: Any, go: str) -> HttpError:
    return HttpError(
        400, f"json: cannot unmarshal {json_kind(value)} into Go struct field {struct}.{field} of type {go}"
    )


def parse_think(value: Any) -> Any:
    """ThinkValue.UnmarshalJSON: true/false or "low"/"medium"/"high"/"max"; null is unset."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise HttpError(
                400,
                f"invalid think value: {json.dumps(value)} "
                '(must be "high", "medium", "low", "max", true, or false)',
            )
        return value
    raise HttpError(400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def go_duration(text: str) -> float:
    """time.ParseDuration, in seconds (errors with Go's texts)."""
    quoted = json.dumps(text)
    s = text
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-") if s[:1] in "+-" else s
    if s == "0":
        return 0.0
    if not s:
        raise HttpError(400, f"time: invalid duration {quoted}")
    total, pos = 0.0, 0
    while pos < len(s):
        match = _DURATION.match(s, pos)
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise HttpError(400, f"time: invalid duration {quoted}")
        if not unit:
            raise HttpError(400, f"time: missing unit in duration {quoted}")
        if unit not in _UNITS:
            raise HttpError(400, f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        total += float(number) * _UNITS[unit]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: Any, default: float = 300.0) -> float | None:
    """api.Duration: a number of seconds or a Go duration; negative is forever (-1). None: unset."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HttpError(400, f"Unsupported type: '{go_type(value)}'")
    seconds = float(value) if not isinstance(value, str) else go_duration(value)
    return -1.0 if seconds < 0 else seconds


# Options and Runner (api/types.go): json name -> kind.
OPTION_KINDS = {
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "*int", "use_mmap": "*bool",
    "num_thread": "int", "draft_num_predict": "int",
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string",
}  # fmt: skip
RUNNER_OPTIONS = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "draft_num_predict",
)


def options_from_map(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Options.FromMap: unknown keys are skipped (Ollama logs "invalid option provided"), nulls are
    skipped, an integer option takes a JSON float (truncated); a wrong type is an error (which the
    handlers answer with a 500). Returns (the options as Ollama holds them, the ignored keys)."""
    parsed: dict[str, Any] = {}
    ignored = []
    for key, value in options.items():
        kind = OPTION_KINDS.get(key)
        if kind is None:
            ignored.append(key)
            continue
        if value is None:
            continue
        name = json.dumps(key)
        if kind in ("int", "*int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HttpError(500, f"option {name} must be of type integer")
            parsed[key] = int(value)
        elif kind == "*bool":
            if not isinstance(value, bool):
                raise HttpError(500, f"option {name} must be of type boolean")
            parsed[key] = value
        elif kind == "float32":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HttpError(500, f"option {name} must be of type float32")
            parsed[key] = float(value)
        else:
            if not isinstance(value, list):
                raise HttpError(500, f"option {name} must be of type array")
            if not all(isinstance(item, str) for item in value):
                raise HttpError(500, f"option {name} must be of an array of strings")
            parsed[key] = list(value)
    return parsed, ignored


def format_error(fmt: Any) -> str | None:
    """llm/llama_server.go: ``"json"``, a schema object, ``""`` or null; anything else fails."""
    if fmt is None or fmt in ("", "json") or isinstance(fmt, dict):
        return None
    return f'invalid format: {json.dumps(json.dumps(fmt))}; expected "json" or a valid JSON Schema object'


_B64 = set(string.ascii_letters + string.digits + "+/")


def decode_b64(text: str) -> bytes:
    """base64.StdEncoding.DecodeString, with Go's "illegal base64 data at input byte N"."""
    cleaned = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        bad = next((i for i, ch in enumerate(cleaned) if ch not in _B64 and ch != "="), None)
        if bad is None:
            first_pad = cleaned.find("=")
            bad = first_pad if first_pad >= 0 and len(cleaned) % 4 == 0 else len(cleaned) - len(cleaned) % 4
        raise HttpError(400, f"illegal base64 data at input byte {bad}") from None


# --- embeddings ---------------------------------------------------------------------------------


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_json(x: float) -> float:
    """The float64 that prints as Go prints this float32 (shortest repr)."""
    for precision in range(6, 10):
        text = float(f"{x:.{precision}g}")
        if f32(text) == x:
            return text
    return x


def raw_embedding(model: str, text: str, dims: int) -> list[float]:
    """What the runner returns for a text (unnormalised, as /api/embeddings serves it)."""
    rnd = random.Random(int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "big"))
    return [f32(rnd.uniform(-1.0, 1.0)) for _ in range(dims)]


def normalize(vector: list[float]) -> list[float]:
    norm = 1.0 / max(sum(v * v for v in vector) ** 0.5, 1e-12)
    return [f32(v * norm) for v in vector]


def floats_to_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
