"""Bodies of Ollama's own API as the gateway serves it (``/api/chat``, ``/api/generate``...)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.schemas.base import Json, Limit, ModelName, Strict, Text
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
    "input": "invalid_input",
}
UNKNOWN = ("unknown_field", "unknown field {field!r}")

PromptText = Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")]


class OllamaBody(GenerationFields):
    unknown_field: ClassVar[tuple[str, str]] = UNKNOWN
    field_codes: ClassVar[dict[str, str]] = OLLAMA_CODES

    model: ModelName
    stream: bool = True  # Ollama's native endpoints stream by default
    think: Json = None

    def answer_fields(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The fields named that were sent with a value, as sent."""
        sent = self.model_dump(include=set(names), exclude_unset=True)
        return {k: v for k, v in sent.items() if v is not None}


class OllamaChatBody(OllamaBody):
    """``POST /api/chat``; empty ``messages`` only loads (or unloads) the model."""

    messages: MessagesOrNone = Field(default_factory=list)
    tools: Json = None

    # Besides model, messages, options and format: what changes the answer.
    ANSWER_FIELDS: ClassVar[tuple[str, ...]] = ("tools", "think")


class OllamaGenerateBody(OllamaBody):
    """``POST /api/generate``; an empty ``prompt`` only loads (or unloads) the model."""

    prompt: PromptText | None = None
    suffix: Json = None
    system: PromptText | None = None
    template: Json = None
    context: Json = None
    raw: Json = None
    images: Json = None

    ANSWER_FIELDS: ClassVar[tuple[str, ...]] = ("suffix", "template", "context", "raw", "images", "think")


EmbedInput = Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[Text], Field(max_length=4096)]


class EmbedBody(Strict):
    """``POST /api/embed``."""

    unknown_field: ClassVar[tuple[str, str]] = UNKNOWN
    field_codes: ClassVar[dict[str, str]] = OLLAMA_CODES

    model: ModelName
    input: EmbedInput
    truncate: Json = None
    options: Options | None = None
    keep_alive: Json = None
    dimensions: Json = None


class ShowBody(Strict):
    """``POST /api/show``: ``model``, or ``name`` as older clients send it."""

    model_config = {**Strict.model_config, "extra": "ignore"}
    unknown_field: ClassVar[tuple[str, str]] = UNKNOWN
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
