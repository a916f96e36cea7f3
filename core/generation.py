"""The generation record: what one generation produced, as Ollama sent it, for every surface.

Each chunk of the record is one of Ollama's streamed chunks, flattened and without what the
surfaces add back themselves (``model``, ``created_at``, ``done``, the assistant ``role``):

    {"content": "Rust", "thinking": "...", "tool_calls": [...], "images": [...], "logprobs": [...]}

(``content`` is ``message.content`` on /api/chat and ``response`` on /api/generate; a key appears
only when Ollama sent it, ``content`` always.) The final chunk's own fields (``done_reason``, the
nanosecond metrics, ``context``) are the record's ``final``. The worker builds it, every listener
receives it chunk for chunk (late listeners included), the response cache stores it and a hit
replays it: tool calls keep their ids, thinking its chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Chunk = dict[str, Any]

# Ollama's final-chunk metrics: nanoseconds and token counts (each omitted by Ollama when zero).
METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
# What a streamed chunk carries that is not the generation's (the surfaces add it back).
_ENVELOPE = {"model", "created_at", "done", "message", "response", "remote_model", "remote_host"}
# The final chunk's fields that are not part of the answer's text.
_FINAL_MESSAGE_FIELDS = ("content", "thinking", "tool_calls", "images")


# Endpoints that answer with one JSON object (embeddings): the record's ``final`` holds it whole,
# as ``body``, beside its metrics.
WHOLE_ENDPOINTS = ("embed", "embeddings")


def metrics(final: dict[str, Any]) -> dict[str, int]:
    """Ollama's final-chunk metrics, those it sent."""
    return {key: final[key] for key in METRIC_KEYS if key in final}


def record_chunk(endpoint: str, chunk: dict[str, Any]) -> Chunk:
    """One of Ollama's streamed chunks as a record chunk."""
    if endpoint == "generate":
        out: Chunk = {"content": chunk.get("response") or ""}
        if chunk.get("thinking"):
            out["thinking"] = chunk["thinking"]
    else:
        message = chunk.get("message") or {}
        out = {"content": message.get("content") or ""}
        for key, value in message.items():
            if key not in ("role", "content") and value not in (None, "", []):
                out[key] = value
    for key, value in chunk.items():
        if key not in _ENVELOPE and key not in out and key != "thinking" and value not in (None, []):
            out[key] = value  # logprobs, and whatever Ollama adds beside the message
    return out


def split_final(endpoint: str, chunk: dict[str, Any]) -> tuple[Chunk | None, dict[str, Any]]:
    """Ollama's final chunk: what it still carried of the answer (a chunk, or None), and the
    record's ``final`` (done_reason, metrics, context)."""
    last = record_chunk(endpoint, chunk)
    carries = any(last.get(key) for key in (*_FINAL_MESSAGE_FIELDS, "logprobs"))
    final = {k: v for k, v in chunk.items() if k not in _ENVELOPE and k not in ("thinking", "logprobs")}
    return (last if carries else None), final


def is_empty(chunk: Chunk) -> bool:
    return not any(chunk.get(key) for key in (*_FINAL_MESSAGE_FIELDS, "logprobs"))


class Answer:
    """A record's chunks added up: the whole answer of a non-streaming response."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.images: list[str] = []
        self.logprobs: list[dict[str, Any]] = []

    def add(self, chunk: Chunk) -> None:
        self.content.append(chunk.get("content") or "")
        if chunk.get("thinking"):
            self.thinking.append(chunk["thinking"])
        self.tool_calls.extend(chunk.get("tool_calls") or ())
        self.images.extend(chunk.get("images") or ())
        self.logprobs.extend(chunk.get("logprobs") or ())

    @classmethod
    def of(cls, chunks: Iterable[Chunk]) -> Answer:
        answer = cls()
        for chunk in chunks:
            answer.add(chunk)
        return answer

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def thought(self) -> str:
        return "".join(self.thinking)

    def message(self) -> dict[str, Any]:
        """The assistant message as Ollama's /api/chat returns it (and a conversation stores it)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.thinking:
            out["thinking"] = self.thought
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.images:
            out["images"] = self.images
        return out


def content_of(chunks: list[Chunk]) -> str:
    return "".join(chunk.get("content") or "" for chunk in chunks)
