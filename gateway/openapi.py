"""The OpenAPI 3.1 document of the whole HTTP API, served at ``GET /api/schema``.

Limits come from the running configuration, so the document states what *this* server accepts.
``tests/chatbot_site/test_openapi.py`` validates live responses against it, and a schemathesis run
fuzzes the live server with it (``make fuzz``, part of ``make test``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from chat.http import api_view
from chat.openai_api import OPTION_NAMES as OPENAI_OPTIONS
from chat.requests import MAX_DEPTH, MODEL_NAME, OPTIONS
from chat.services import METRIC_KEYS

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
# One Server-Sent Event, as schemathesis and other SSE-aware tools parse them.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
}
KEEP_ALIVE_PATTERN = r"^(-?[0-9]+|-?([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], *required: str, closed: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, "content": {JSON: {"schema": schema}}}


def body(content_type: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {content_type: {"schema": schema}}}


def errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    words = {
        400: "Bad input, naming the field.",
        401: "A key is required (`Authorization: Bearer <key>`) or the key is wrong.",
        403: "Not allowed.",
        404: "Not found (or owned by another key).",
        405: "Method not allowed.",
        409: "The request has already finished.",
        413: "The body is larger than `[limits] max_body_bytes`.",
        429: "Queue full or rate limited; see `Retry-After`.",
        502: "Ollama unreachable or its answer unusable.",
        503: "Ollama busy, or a required dependency is down.",
        504: "Ollama timed out.",
    }
    return {str(s): body(JSON, ref(schema), words[s]) for s in statuses}


GENERATION_ERRORS = (400, 401, 404, 405, 413, 429, 502, 503, 504)


def _option_schema(types: tuple[type, ...], low: float | None, high: float | None) -> dict[str, Any]:
    if bool in types:
        return {"type": "boolean"}
    if str in types:
        return {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            ]
        }
    schema: dict[str, Any] = {"type": "integer" if float not in types else "number"}
    if low is not None:
        schema.update(minimum=low, maximum=high)
    return schema


def _schemas() -> dict[str, Any]:
    priority = settings.LIMITS_MAX_PRIORITY
    model_name = {"type": "string", "pattern": MODEL_NAME.pattern, "maxLength": 200}
    # What every generation request may carry, as chat.requests checks it.
    generation_fields = {
        "options": {"anyOf": [ref("Options"), {"type": "null"}]},
        "format": {"oneOf": [{"const": "json"}, {"type": "object"}, {"type": "null"}]},
        "keep_alive": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": KEEP_ALIVE_PATTERN}]},
    }
    status_block = obj(
        {
            "queue_position": {"type": "integer", "minimum": 0},
            "queue_length": {"type": "integer", "minimum": 0},
            "estimated_wait_time": {"type": "integer", "minimum": 0, "description": "milliseconds"},
            "is_processing": {"type": "boolean"},
        },
        "queue_position",
        "queue_length",
        "estimated_wait_time",
        "is_processing",
    )
    cache_block = obj(
        {
            name: {"type": "number", "minimum": 0}
            for name in (
                "total_entries",
                "total_size_mb",
                "total_size_bytes",
                "max_size_mb",
                "hit_rate",
                "miss_rate",
                "hits",
                "misses",
                "evictions",
                "memory_usage_percent",
            )
        },
        "total_entries",
        "total_size_mb",
        "hit_rate",
        "memory_usage_percent",
    )
    return {
        "Error": obj(
            {
                "error": {"type": "string", "minLength": 1},
                "code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
            },
            "error",
            "code",
        ),
        "OllamaError": obj({"error": {"type": "string", "minLength": 1}}, "error"),
        "OpenAIError": obj(
            {
                "error": obj(
                    {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                    "message",
                    "type",
                )
            },
            "error",
        ),
        "Message": obj(
            {
                "role": {"enum": ["system", "user", "assistant", "tool"]},
                "content": {"type": "string", "maxLength": settings.LIMITS_MAX_MESSAGE_CHARS},
                "images": {"type": ["array", "null"], "items": {"type": "string"}},
                "thinking": {"type": "string"},
                "tool_name": {"type": "string"},
                "tool_calls": {"type": "array", "items": {"type": "object"}},
            },
            "role",
            closed=True,
        ),
        "Options": obj({name: _option_schema(*spec) for name, spec in OPTIONS.items()}, closed=True),
        "ChatRequest": obj(
            {
                "messages": {
                    "type": "array",
                    "items": ref("Message"),
                    "minItems": 1,
                    "maxItems": settings.LIMITS_MAX_MESSAGES,
                },
                "model": model_name,
                "stream": {"type": "boolean", "default": False},
                "use_cache": {"type": "boolean", "default": True},
                "priority": {"type": "integer", "minimum": -priority, "maximum": priority, "default": 0},
                **generation_fields,
                "conversation_id": {
                    "oneOf": [{"const": "new"}, {"type": "string", "pattern": UUID_PATTERN}],
                    "description": 'A conversation id (UUID), or "new" to start a conversation.',
                },
            },
            "messages",
            closed=True,
        ),
        "Metrics": obj({name: {"type": "integer", "minimum": 0} for name in METRIC_KEYS}),
        "ChatAnswer": obj(
            {
                "message": obj(
                    {"role": {"const": "assistant"}, "content": {"type": "string"}}, "role", "content"
                ),
                "cached": {"type": "boolean"},
                "model": {"type": "string"},
                "done_reason": {"type": "string"},
                "metrics": ref("Metrics"),
                "conversation_id": {"type": "string", "pattern": UUID_PATTERN},
            },
            "message",
            "cached",
            "model",
        ),
        "QueueStatus": status_block,
        "QueueAccepted": obj(
            {"request_id": {"type": "string", "format": "uuid"}, "status": status_block},
            "request_id",
            "status",
        ),
        "QueueRequestStatus": obj(
            {
                "request_id": {"type": "string", "format": "uuid"},
                "status": {"enum": ["pending", "processing", "completed", "failed", "cancelled"]},
                "queue_position": {"type": "integer", "minimum": 0},
                "result": ref("ChatAnswer"),
                "error": ref("Error"),
            },
            "request_id",
            "status",
        ),
        "QueueOverview": obj(
            {
                "queue_length": {"type": "integer", "minimum": 0},
                "processing": {"type": "integer", "minimum": 0},
                "generations_in_flight": {"type": "integer", "minimum": 0},
                "max_concurrent": {"type": "integer", "minimum": 1},
                "max_queue_size": {"type": "integer", "minimum": 1},
                "is_processing": {"type": "boolean"},
                "oldest_wait_ms": {"type": "integer", "minimum": 0},
                "pending_by_priority": {"type": "object", "additionalProperties": {"type": "integer"}},
                "by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
                "average_generation_ms": {"type": "number", "minimum": 0},
            },
            "queue_length",
            "processing",
            "generations_in_flight",
            "max_concurrent",
            "by_status",
        ),
        "Conversation": obj(
            {
                "conversation_id": {"type": "string", "format": "uuid"},
                "messages": {"type": "array", "items": {"type": "object"}},
            },
            "conversation_id",
            "messages",
        ),
        "CacheStats": obj(
            {
                "timestamp": {"type": "string", "format": "date-time"},
                "response_cache": cache_block,
                "conversation_cache": cache_block,
                "batch_processor": obj(
                    {
                        "total_requests": {"type": "integer", "minimum": 0},
                        "cached_responses": {"type": "integer", "minimum": 0},
                        "cache_hit_rate": {"type": "number", "minimum": 0, "maximum": 100},
                        "average_batch_size": {"type": "number", "minimum": 0},
                    },
                    "total_requests",
                    "cached_responses",
                    "cache_hit_rate",
                    "average_batch_size",
                ),
                "queue_length": {"type": "integer", "minimum": 0},
                "is_processing": {"type": "boolean"},
                "queue": ref("QueueOverview"),
                "requests": {"type": "object"},
                "upstream_errors": {"type": "object", "additionalProperties": {"type": "integer"}},
                "ollama": {"type": "object"},
            },
            "timestamp",
            "response_cache",
            "conversation_cache",
            "batch_processor",
            "queue_length",
            "is_processing",
        ),
        "CacheAction": obj(
            {
                "action": {
                    "enum": ["clear", "clear_response_cache", "clear_conversation_cache", "warm_model"]
                },
                "data": {
                    "type": ["object", "null"],
                    "description": 'For warm_model: {"model": ..., "keep_alive": "30m"}; ignored otherwise.',
                },
            },
            "action",
        ),
        "Health": obj(
            {
                "status": {"enum": ["healthy", "unhealthy"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": obj({"ok": {"type": "boolean"}}, "ok"),
                },
            },
            "status",
            closed=True,
        ),
        "OllamaChatRequest": obj(
            {
                "model": model_name,
                "messages": {
                    "type": "array",
                    "items": ref("Message"),
                    "maxItems": settings.LIMITS_MAX_MESSAGES,
                },
                "stream": {"type": "boolean"},
                **generation_fields,
            },
            "model",
        ),
        "OllamaGenerateRequest": obj(
            {
                "model": model_name,
                "prompt": {"type": "string", "maxLength": settings.LIMITS_MAX_MESSAGE_CHARS},
                "system": {"type": "string", "maxLength": settings.LIMITS_MAX_MESSAGE_CHARS},
                "stream": {"type": "boolean"},
                **generation_fields,
            },
            "model",
        ),
        "OllamaChunk": {"type": "object", "required": ["model", "done"]},
        "OllamaJson": {"type": "object"},
        "OpenAIChatRequest": obj(
            {
                "model": {
                    "type": ["string", "null"],
                    "pattern": "^$|" + MODEL_NAME.pattern,
                    "maxLength": 200,
                },
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.LIMITS_MAX_MESSAGES,
                    "items": obj(
                        {
                            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                            "content": {
                                "anyOf": [
                                    {"type": "string", "maxLength": settings.LIMITS_MAX_MESSAGE_CHARS},
                                    {
                                        "type": "array",
                                        "items": obj(
                                            {"type": {"const": "text"}, "text": {"type": "string"}},
                                            "type",
                                            "text",
                                        ),
                                    },
                                    {"type": "null"},
                                ]
                            },
                        },
                        "role",
                    ),
                },
                "stream": {"type": "boolean"},
                # Each becomes an Ollama option, whose type and range apply; null means unset.
                **{
                    name: {"anyOf": [_option_schema(*OPTIONS[option]), {"type": "null"}]}
                    for name, option in OPENAI_OPTIONS.items()
                },
            },
            "messages",
        ),
        "OpenAIChatCompletion": {"type": "object", "required": ["id", "object", "choices", "model"]},
        "OpenAIModels": obj({"object": {"const": "list"}, "data": {"type": "array"}}, "object", "data"),
    }


def _queue_request(schemas: dict[str, Any]) -> dict[str, Any]:
    chat = schemas["ChatRequest"]
    props = {k: v for k, v in chat["properties"].items() if k not in ("stream", "conversation_id")}
    return {**chat, "properties": props}


def _request_id_param(required: bool) -> dict[str, Any]:
    return {
        "name": "requestId",
        "in": "query",
        "required": required,
        "schema": {"type": "string", "format": "uuid"},
    }


def document() -> dict[str, Any]:
    """The whole API as an OpenAPI 3.1 document."""
    schemas = _schemas()
    schemas["QueueRequest"] = _queue_request(schemas)  # chat's body minus stream and conversation_id
    generation = errors(*GENERATION_ERRORS)
    ollama_errors = errors(400, 401, 404, 405, 413, 429, 502, 503, 504, schema="OllamaError")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatbot-backend",
            "version": "1.0.0",
            "description": (
                "A gateway in front of Ollama: response cache, conversations, deduplication, a "
                'priority queue, SSE streaming. Errors are `{"error", "code"}`; nesting deeper '
                f"than {MAX_DEPTH} levels, NaN/Infinity, NUL characters and lone surrogates are 400."
            ),
        },
        "security": [{}, {"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Liveness; `?deep=1` probes every dependency.",
                    "parameters": [
                        {"name": "deep", "in": "query", "schema": {"type": "string"}, "example": "1"}
                    ],
                    "responses": {
                        "200": body(JSON, ref("Health"), "Healthy."),
                        "503": body(JSON, ref("Health"), "A required dependency failed."),
                    },
                }
            },
            "/api/schema": {
                "get": {
                    "summary": "This document.",
                    "responses": {
                        "200": body(JSON, {"type": "object", "required": ["openapi"]}, "OpenAPI 3.1.")
                    },
                }
            },
            "/api/chat-optimized": {
                "post": {
                    "summary": "Chat, through the cache and the scheduler; SSE with `stream: true`.",
                    "requestBody": json_body(ref("ChatRequest")),
                    "responses": {
                        "200": {
                            "description": "The answer, or its SSE stream.",
                            "content": {JSON: {"schema": ref("ChatAnswer")}, SSE: {"schema": SSE_EVENT}},
                            "links": {
                                name: {
                                    "operationId": operation,
                                    "parameters": {"conversation_id": "$response.body#/conversation_id"},
                                }
                                for name, operation in (
                                    ("Conversation", "conversationGet"),
                                    ("Forget", "conversationDelete"),
                                )
                            },
                        },
                        **generation,
                    },
                }
            },
            "/api/conversations/{conversation_id}": {
                "parameters": [
                    {
                        "name": "conversation_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": UUID_PATTERN},
                    }
                ],
                "get": {
                    "operationId": "conversationGet",
                    "summary": "A conversation's stored history.",
                    "responses": {
                        "200": body(JSON, ref("Conversation"), "The history."),
                        **errors(400, 401, 404),
                    },
                },
                "delete": {
                    "operationId": "conversationDelete",
                    "summary": "Forget a conversation.",
                    "responses": {"204": {"description": "Forgotten."}, **errors(400, 401, 404)},
                },
            },
            "/api/chat-queue": {
                "post": {
                    "operationId": "queueSubmit",
                    "summary": "Queue a request (202).",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "maxLength": 200},
                            "description": "Repeating a key returns the same request; empty means none.",
                        }
                    ],
                    "requestBody": json_body(ref("QueueRequest")),
                    "responses": {
                        "202": {
                            **body(JSON, ref("QueueAccepted"), "Accepted."),
                            "links": {
                                name: {
                                    "operationId": operation,
                                    "parameters": {"requestId": "$response.body#/request_id"},
                                }
                                for name, operation in (
                                    ("Status", "queueStatus"),
                                    ("Stream", "queueStream"),
                                    ("Cancel", "queueCancel"),
                                )
                            },
                        },
                        **errors(400, 401, 413, 429, 502, 503, 504),
                    },
                },
                "get": {
                    "operationId": "queueStatus",
                    "summary": "A request's status (`requestId`), or the queue overview without it.",
                    "parameters": [_request_id_param(False)],
                    "responses": {
                        "200": {
                            "description": "Status or overview.",
                            "content": {
                                JSON: {"schema": {"anyOf": [ref("QueueRequestStatus"), ref("QueueOverview")]}}
                            },
                        },
                        **errors(400, 401, 404),
                    },
                },
                "delete": {
                    "operationId": "queueCancel",
                    "summary": "Cancel a request.",
                    "parameters": [_request_id_param(True)],
                    "responses": {
                        "200": body(
                            JSON,
                            obj(
                                {"request_id": {"type": "string"}, "status": {"const": "cancelled"}},
                                "request_id",
                            ),
                            "Cancelled.",
                        ),
                        **errors(400, 401, 404, 409),
                    },
                },
            },
            "/api/chat-queue/stream": {
                "get": {
                    "operationId": "queueStream",
                    "summary": "SSE of a queued request's tokens (a finished one is replayed).",
                    "parameters": [_request_id_param(True)],
                    "responses": {
                        "200": body(SSE, SSE_EVENT, "The stream."),
                        **errors(400, 401, 404),
                    },
                }
            },
            "/api/cache-stats": {
                "get": {
                    "summary": "Statistics, shared by all processes.",
                    "responses": {"200": body(JSON, ref("CacheStats"), "Statistics."), **errors(401)},
                },
                "post": {
                    "summary": "An operator action (`X-Admin-Token` or a staff session).",
                    "requestBody": json_body(ref("CacheAction")),
                    "responses": {
                        "200": body(JSON, {"type": "object"}, "Done."),
                        **errors(400, 401, 403, 404, 413, 502, 503, 504),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format.",
                    "responses": {
                        "200": body("text/plain", {"type": "string"}, "Metrics."),
                        **errors(401),
                    },
                }
            },
            **{
                f"/api/{name}": {
                    "post": {
                        "summary": f"Ollama's {name} (NDJSON unless `stream: false`).",
                        "requestBody": json_body(ref(schema)),
                        "responses": {
                            "200": {
                                "description": "The answer or its NDJSON stream.",
                                "content": {
                                    JSON: {"schema": ref("OllamaChunk")},
                                    NDJSON: {"schema": {"type": "string"}},
                                },
                            },
                            **ollama_errors,
                        },
                    }
                }
                for name, schema in (("chat", "OllamaChatRequest"), ("generate", "OllamaGenerateRequest"))
            },
            "/api/embed": {
                "post": {
                    "summary": "Ollama's embed (cached by model and input).",
                    "requestBody": json_body(
                        obj(
                            {
                                "model": {"type": "string", "pattern": MODEL_NAME.pattern},
                                "input": {
                                    "oneOf": [
                                        {"type": "string", "maxLength": 1000},
                                        {"type": "array", "items": {"type": "string"}, "maxItems": 16},
                                    ]
                                },
                            },
                            "model",
                            "input",
                        )
                    ),
                    "responses": {"200": body(JSON, ref("OllamaJson"), "Embeddings."), **ollama_errors},
                }
            },
            **{
                f"/api/{name}": {
                    "get": {
                        "summary": f"Ollama's {name}, passed through.",
                        "responses": {
                            "200": body(JSON, ref("OllamaJson"), "Ollama's answer."),
                            **errors(401, 502, 503, 504, schema="OllamaError"),
                        },
                    }
                }
                for name in ("tags", "ps", "version")
            },
            "/api/show": {
                "post": {
                    "summary": "Ollama's show, passed through.",
                    "requestBody": json_body(
                        obj({"model": {"type": "string", "pattern": MODEL_NAME.pattern}}, "model")
                    ),
                    "responses": {"200": body(JSON, ref("OllamaJson"), "Model details."), **ollama_errors},
                }
            },
            **{
                path: {
                    **(
                        {
                            "parameters": [
                                {
                                    "name": "digest",
                                    "in": "path",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            ]
                        }
                        if "{digest}" in path
                        else {}
                    ),
                    **{
                        method: {
                            "summary": "Model management: refused, a shared gateway never forwards it.",
                            "responses": {
                                "403": body(JSON, ref("OllamaError"), "Refused."),
                                **errors(*((401, 404) if "{digest}" in path else (401,))),
                            },
                        }
                        for method in ("post", "delete")
                    },
                }
                for path in (
                    *(f"/api/{n}" for n in ("pull", "push", "create", "copy", "delete")),
                    "/api/blobs/{digest}",
                )
            },
            "/v1/chat/completions": {
                "post": {
                    "summary": "OpenAI's chat completions (SSE with `stream: true`).",
                    "requestBody": json_body(ref("OpenAIChatRequest")),
                    "responses": {
                        "200": {
                            "description": "A chat.completion or its chunk stream.",
                            "content": {
                                JSON: {"schema": ref("OpenAIChatCompletion")},
                                SSE: {"schema": SSE_EVENT},
                            },
                        },
                        **errors(*GENERATION_ERRORS, schema="OpenAIError"),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Models Ollama has, in OpenAI's shape.",
                    "responses": {
                        "200": body(JSON, ref("OpenAIModels"), "Models."),
                        **errors(401, 502, 503, 504, schema="OpenAIError"),
                    },
                }
            },
        },
    }


@api_view("GET")
async def schema_view(request: HttpRequest) -> JsonResponse:
    """``GET /api/schema``: public, like ``/health`` (it describes the API, not anyone's data)."""
    return JsonResponse(document())
