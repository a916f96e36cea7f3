"""An Ollama emulator: a real HTTP/1.1 server on a loopback port that speaks Ollama's API.

It answers as a current Ollama does, field for field: the native API (``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/version``), the OpenAI-compatible layer (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models``, ``/v1/responses``) and the Anthropic-compatible
``/v1/messages``, each translated into the same internal generation as Ollama's middleware does.

Replies are deterministic, derived from the request, so tests can predict every token:
``reply_tokens(body, n)`` is the content (under ``format``, a JSON document built from the schema:
``content_tokens``), ``thinking_tokens(body, n)`` the thinking a thinking model streams first (on
by default for models with the "thinking" capability, as in Ollama), and a tools-capable model
given ``tools`` after a user message answers with ``tool_calls`` (random ``call_xxxxxxxx`` ids,
arguments built from the tools' JSON schemas). The model catalogue
(``CATALOGUE``; ``FakeOllama(models=[...])``) gives each model Ollama's capabilities and
architecture; the scheduler emulates loads, reloads on runner-option changes,
``max_loaded_models`` evictions and the one-at-a-time architectures.

Timing, parallelism, scheduling and fault modes are settable while it runs (``configure``); it
records every request and counts calls and in-flight generations for the tests to read
(``stats()``, ``calls_for``, ``generations_received``).

Use in tests: ``FakeOllama().start()`` runs it on its own thread and event loop. Standalone (for
``make bench`` or by hand): ``python -m tests.fake_ollama --port 11434``. Control endpoints
``GET /_emulator/stats`` and ``POST /_emulator/config`` expose the same knobs over HTTP.
"""

from __future__ import annotations

from .catalogue import (
    ALL_MODELS,
    CATALOGUE,
    DEFAULT_MODELS,
    ONE_AT_A_TIME_ARCHITECTURES,
    ModelInfo,
)
from .engine import GenerationRecord
from .rules import (
    BUSY_MESSAGE,
    FAULTS,
    MULTIMODAL_REFUSED,
    VERSION,
    VOCAB,
    HttpError,
    content_tokens,
    format_tokens,
    prompt_words,
    reply_tokens,
    request_signature,
    thinking_count,
    thinking_tokens,
    tool_arguments,
)
from .server import FakeOllama, RecordedRequest, Settings
from .translate import to_native

__all__ = [
    "ALL_MODELS",
    "BUSY_MESSAGE",
    "CATALOGUE",
    "DEFAULT_MODELS",
    "FAULTS",
    "MULTIMODAL_REFUSED",
    "ONE_AT_A_TIME_ARCHITECTURES",
    "VERSION",
    "VOCAB",
    "FakeOllama",
    "GenerationRecord",
    "HttpError",
    "ModelInfo",
    "RecordedRequest",
    "Settings",
    "content_tokens",
    "format_tokens",
    "prompt_words",
    "reply_tokens",
    "request_signature",
    "thinking_count",
    "thinking_tokens",
    "to_native",
    "tool_arguments",
]
