"""Bodies of OpenAI's API as the gateway serves it (``/v1/chat/completions``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.schemas.base import Json, JsonObject, Limit, ModelName, Strict, Text
from gateway.schemas.generation import Fraction, Hundred, SignedHundred, Stop

OPENAI_CODES = {
    "model": "invalid_model",
    "messages": "invalid_messages",
    "stream": "invalid_stream",
    "stream_options": "invalid_stream",
    "response_format": "invalid_format",
    "n": "unsupported_parameter",
    "temperature": "invalid_options",
    "top_p": "invalid_options",
    "seed": "invalid_options",
    "presence_penalty": "invalid_options",
    "frequency_penalty": "invalid_options",
    "max_tokens": "invalid_options",
    "max_completion_tokens": "invalid_options",
    "stop": "invalid_options",
}
# OpenAI parameters and the Ollama option each becomes.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "stop": "stop",
}


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class OpenAIMessage(Strict):
    """A chat message; fields the gateway does not use are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(**{**Strict.model_config, "extra": "ignore"})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] | list[TextPart] | None = None
    name: Text | None = None

    def ollama_message(self) -> dict[str, Any]:
        """As Ollama's /api/chat takes it: developer is system, parts are joined."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class StreamOptions(Strict):
    model_config = ConfigDict(**{**Strict.model_config, "extra": "ignore"})
    include_usage: bool = False


class JsonSchemaSpec(Strict):
    model_config = ConfigDict(**{**Strict.model_config, "extra": "ignore"})
    schema_: JsonObject = Field(alias="schema")


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError(
                "invalid_format", "response_format json_schema needs json_schema.schema"
            )
        return self

    def ollama_format(self) -> Any:
        """Ollama's ``format``: "json", a JSON schema, or None for text."""
        if self.type == "json_object":
            return "json"
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return None


def _only_one(value: int) -> int:
    if value != 1:
        raise PydanticCustomError("unsupported_parameter", "Only n=1 is supported.")
    return value


class ChatCompletionsBody(Strict):
    """``POST /v1/chat/completions``."""

    unknown_field: ClassVar[tuple[str, str]] = ("unsupported_parameter", "Unsupported parameter {field!r}.")
    field_codes: ClassVar[dict[str, str]] = OPENAI_CODES

    model: Literal[""] | ModelName | None = None  # "" or null: the default model
    messages: Annotated[list[OpenAIMessage], Limit("LIMITS_MAX_MESSAGES", minimum=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Annotated[int, AfterValidator(_only_one)] | None = None
    user: Json = None
    metadata: Json = None
    store: Json = None
    # Each becomes an Ollama option, with its type and range; null means unset.
    temperature: Hundred | None = None
    top_p: Fraction | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: SignedHundred | None = None
    frequency_penalty: SignedHundred | None = None
    max_tokens: Annotated[int, Field(ge=-2, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=-2, le=1_000_000)] | None = None
    stop: Stop | None = None

    def ollama_options(self) -> dict[str, Any] | None:
        options: dict[str, Any] = {}
        for name, option in OPTION_NAMES.items():
            value = getattr(self, name)
            if value is not None:
                options[option] = [value] if name == "stop" and isinstance(value, str) else value
        return options or None
