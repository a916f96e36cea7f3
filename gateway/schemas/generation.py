"""The parts every generation request shares: messages, Ollama's options, format, keep_alive."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from gateway.schemas.base import Json, JsonObject, KeepAlive, Limit, Strict, Text

Role = Literal["system", "user", "assistant", "tool"]


def _number(low: float, high: float) -> Any:
    """A JSON number within [low, high], kept as sent (an integer stays an integer)."""
    return Annotated[int, Field(ge=low, le=high)] | Annotated[float, Field(ge=low, le=high)]


if TYPE_CHECKING:
    Fraction: TypeAlias = float
    Hundred: TypeAlias = float
    SignedHundred: TypeAlias = float
else:
    Fraction = _number(0, 1)
    Hundred = _number(0, 100)
    SignedHundred = _number(-100, 100)

Stop = Text | Annotated[list[Text], Field(max_length=16)]


class Message(Strict):
    """One chat message, as Ollama's /api/chat takes it."""

    role: Role
    content: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] = ""
    images: list[Text] | None = None
    tool_calls: list[JsonObject] = Field(default_factory=list)
    tool_name: Text = ""
    thinking: Text = ""


Messages = Annotated[list[Message], Limit("LIMITS_MAX_MESSAGES", minimum=1)]
MessagesOrNone = Annotated[list[Message], Limit("LIMITS_MAX_MESSAGES")]


class Options(Strict):
    """Ollama's generation options the gateway passes through, each with its type and range."""

    temperature: Hundred | None = None
    top_p: Fraction | None = None
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    min_p: Fraction | None = None
    typical_p: Fraction | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    num_predict: Annotated[int, Field(ge=-2, le=1_000_000)] | None = None
    num_ctx: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    num_keep: Annotated[int, Field(ge=-1, le=10_000_000)] | None = None
    num_batch: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1, le=10_000_000)] | None = None
    repeat_penalty: Hundred | None = None
    presence_penalty: SignedHundred | None = None
    frequency_penalty: SignedHundred | None = None
    mirostat: Annotated[int, Field(ge=0, le=2)] | None = None
    mirostat_tau: Hundred | None = None
    mirostat_eta: Hundred | None = None
    penalize_newline: bool | None = None
    stop: Stop | None = None

    def fields_set(self) -> dict[str, Any]:
        """The options sent, as sent; a null option is absent (as Ollama treats it)."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


Format = Literal["json"] | JsonObject


def _conversation_id(value: str) -> str:
    if value == "new":
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise PydanticCustomError(
            "invalid_conversation_id", 'A conversation id must be a UUID (or "new" to start a conversation).'
        ) from None


ConversationId = Annotated[Text, AfterValidator(_conversation_id)]


class GenerationFields(Strict):
    """What every chat-like body may carry besides its messages (Ollama's names)."""

    options: Options | None = None
    format: Format | None = None
    keep_alive: KeepAlive | None = None  # default: [ollama] keep_alive

    def ollama_fields(self) -> dict[str, Any]:
        """options and format for Ollama's payload, exactly as sent (unset ones left out)."""
        out: dict[str, Any] = {}
        if self.options is not None:
            options = self.options.fields_set()
            if options:
                out["options"] = options
        if self.format is not None:
            out["format"] = self.format
        return out


__all__ = [
    "ConversationId",
    "Format",
    "GenerationFields",
    "Json",
    "KeepAlive",
    "Message",
    "Messages",
    "MessagesOrNone",
    "Options",
    "Role",
]
