"""Bodies of Ollama's own API as the gateway serves it (``/api/chat``, ``/api/generate``...), with
the fields of Ollama's ``api/types.go``. As Ollama's JSON decoding does, fields it does not know
are ignored (and not forwarded)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.schemas.base import Json, KeepAlive, Limit, ModelName, Strict, Text
from gateway.schemas.generation import GenerationFields, MessagesOrNone, Options

OLLAMA_CODES = {
    "model": "invalid_model",
    "messages": "invalid_messages",
    "stream": "invalid_stream",
    "options": "invalid_options",
    "format": "invalid_format",
    "keep_alive": "invalid_keep_alive",
    "prompt": "invalid_prompt",
    "system": "invalid_prompt",
    "suffix": "invalid_prompt",
    "template": "invalid_prompt",
    "input": "invalid_input",
    "think": "invalid_think",
    "tools": "invalid_tools",
    "images": "invalid_images",
    "context": "invalid_context",
    "logprobs": "invalid_logprobs",
    "top_logprobs": "invalid_logprobs",
}
IGNORE_UNKNOWN = ConfigDict(**{**Strict.model_config, "extra": "ignore"})

PromptText = Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")]


class OllamaBody(GenerationFields):
    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = OLLAMA_CODES

    model: ModelName
    stream: bool = True  # Ollama's native endpoints stream by default
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    truncate: bool | None = None
    shift: bool | None = None
    # Renders the prompt template and generates nothing: passed straight through, never cached.
    debug_render_only: bool | None = Field(default=None, alias="_debug_render_only")

    def native_extra(self) -> dict[str, Any]:
        """The sampling and context fields that were sent, as Ollama takes them."""
        out: dict[str, Any] = {}
        for name in ("logprobs", "top_logprobs", "truncate", "shift"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class OllamaChatBody(OllamaBody):
    """``POST /api/chat``; empty ``messages`` only loads (or unloads) the model."""

    messages: MessagesOrNone = Field(default_factory=list)


class OllamaGenerateBody(OllamaBody):
    """``POST /api/generate``; an empty ``prompt`` only loads (or unloads) the model."""

    prompt: PromptText | None = None
    suffix: PromptText | None = None
    system: PromptText | None = None
    template: PromptText | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[Text] | None = None

    def native_prompt(self) -> dict[str, Any]:
        """prompt and the fields that shape it, as sent (empty ones left out)."""
        out: dict[str, Any] = {"prompt": self.prompt or ""}
        for name in ("suffix", "system", "template", "context", "raw", "images"):
            value = getattr(self, name)
            if value not in (None, "", []):
                out[name] = value
        return out


EmbedInput = Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[Text], Field(max_length=4096)]


class EmbedBody(Strict):
    """``POST /api/embed``."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = OLLAMA_CODES

    model: ModelName
    input: EmbedInput
    truncate: bool | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None

    def native(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "input": self.input}
        options = self.options.native() if self.options is not None else {}
        if options:
            out["options"] = options
        for name in ("truncate", "keep_alive", "dimensions"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class EmbeddingsBody(Strict):
    """``POST /api/embeddings``: the legacy single-prompt embedding."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = {**OLLAMA_CODES, "prompt": "invalid_input"}

    model: ModelName
    prompt: Annotated[Text, Field(max_length=1_000_000)] = ""
    options: Options | None = None
    keep_alive: KeepAlive | None = None

    def native(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        options = self.options.native() if self.options is not None else {}
        if options:
            out["options"] = options
        if self.keep_alive is not None:
            out["keep_alive"] = self.keep_alive
        return out


class ShowBody(Strict):
    """``POST /api/show``: ``model``, or ``name`` as older clients send it."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = {"model": "invalid_model", "name": "invalid_model"}

    model: ModelName | None = None
    name: ModelName | None = None
    verbose: bool | None = None

    @model_validator(mode="after")
    def _one_name(self) -> ShowBody:
        if not (self.model or self.name):
            raise PydanticCustomError("invalid_model", "model is required")
        return self

    @property
    def model_name(self) -> str:
        return str(self.model or self.name)


__all__ = ["EmbedBody", "EmbeddingsBody", "Json", "OllamaChatBody", "OllamaGenerateBody", "ShowBody"]
