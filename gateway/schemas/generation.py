"""The parts every generation request shares, as Ollama's API types declare them (``api/types.go``):
messages, options, think, format, tools, keep_alive."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.schemas.base import JsonObject, KeepAlive, Limit, Strict, Text

logger = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant", "tool"]


def _lower(value: Any) -> Any:
    """Ollama lower-cases a message's role."""
    return value.lower() if isinstance(value, str) else value


def _number(low: float, high: float) -> Any:
    """A JSON number within [low, high], kept as sent (an integer stays an integer)."""
    return Annotated[int, Field(ge=low, le=high)] | Annotated[float, Field(ge=low, le=high)]


if TYPE_CHECKING:
    Number: TypeAlias = float
    Fraction: TypeAlias = float
    Hundred: TypeAlias = float
    SignedHundred: TypeAlias = float
else:
    # Ollama's integer options take a JSON float too (it truncates it).
    Number = int | float
    Fraction = _number(0, 1)
    Hundred = _number(0, 100)
    SignedHundred = _number(-100, 100)

Stop = Text | list[Text]


class Message(Strict):
    """One chat message, as Ollama's /api/chat takes it (fields it does not know are ignored, as
    Ollama's JSON decoding ignores them)."""

    model_config = ConfigDict(**{**Strict.model_config, "extra": "ignore"})

    role: Annotated[Role, BeforeValidator(_lower)]
    content: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] = ""
    images: list[Text] | None = None
    tool_calls: list[JsonObject] | None = None
    tool_name: Text | None = None
    tool_call_id: Text | None = None
    thinking: Text | None = None

    def native(self) -> dict[str, Any]:
        """As sent, minus what was sent empty (Ollama omits empty fields too)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("images", "tool_calls", "tool_name", "tool_call_id", "thinking"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


Messages = Annotated[list[Message], Limit("LIMITS_MAX_MESSAGES", minimum=1)]
MessagesOrNone = Annotated[list[Message], Limit("LIMITS_MAX_MESSAGES")]

# Ollama's Options and Runner (api/types.go). Runner options change the loaded runner: a request
# whose values differ from the loaded runner's makes Ollama reload the model.
RUNNER_OPTIONS = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "draft_num_predict",
)


class Options(Strict):
    """Ollama's options as its ``Options.FromMap`` reads them: a null value is absent, an option it
    does not know is ignored (Ollama logs it and goes on; so do we, and it is not forwarded), an
    integer option takes a float; a wrong type is a 400 naming the option."""

    model_config = ConfigDict(**{**Strict.model_config, "extra": "allow"})

    # Runner
    num_ctx: Number | None = None
    num_batch: Number | None = None
    num_gpu: Number | None = None
    main_gpu: Number | None = None
    use_mmap: bool | None = None
    num_thread: Number | None = None
    draft_num_predict: Number | None = None
    # Generation
    num_keep: Number | None = None
    seed: Number | None = None
    num_predict: Number | None = None
    top_k: Number | None = None
    top_p: Number | None = None
    min_p: Number | None = None
    typical_p: Number | None = None
    repeat_last_n: Number | None = None
    temperature: Number | None = None
    repeat_penalty: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    stop: Stop | None = None

    _ignored_logged: ClassVar[set[str]] = set()

    @model_validator(mode="after")
    def _drop_unknown(self) -> Options:
        extra = self.__pydantic_extra__ or {}
        for name in list(extra):
            if name not in Options._ignored_logged and len(Options._ignored_logged) < 1000:
                Options._ignored_logged.add(name)
                logger.info("ignoring option %r: Ollama does not know it (it ignores it too)", name)
            del extra[name]
        return self

    def native(self) -> dict[str, Any]:
        """The options Ollama acts on, as sent; a string ``stop`` becomes a one-item list."""
        out = self.model_dump(exclude_none=True, exclude_unset=True)
        if isinstance(out.get("stop"), str):
            out["stop"] = [out["stop"]]
        return out

    def samples(self) -> bool:
        """Whether an answer is drawn at random: no seed and a temperature that is not 0."""
        return self.seed is None and self.temperature != 0


def _think(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("low", "medium", "high", "max"):
        return value
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    raise PydanticCustomError(
        "invalid_think",
        f'invalid think value: {shown} (must be "high", "medium", "low", "max", true, or false)',
    )


# true/false or a level; Ollama's 400 for anything else.
Think = Annotated[bool | Literal["low", "medium", "high", "max"] | None, BeforeValidator(_think)]
# "json", a JSON schema, or "" (no format, as Ollama treats it).
Format = Literal["", "json"] | JsonObject


def native_format(value: Any) -> Any:
    return None if value in (None, "") else value


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
    think: Think = None
    tools: list[JsonObject] | None = None

    def ollama_fields(self) -> dict[str, Any]:
        """options, format, think and tools for Ollama's payload (unset ones left out)."""
        out: dict[str, Any] = {}
        options = self.options.native() if self.options is not None else {}
        if options:
            out["options"] = options
        fmt = native_format(self.format)
        if fmt is not None:
            out["format"] = fmt
        if self.think is not None:
            out["think"] = self.think
        if self.tools:
            out["tools"] = self.tools
        return out

    def samples(self) -> bool:
        return self.options.samples() if self.options is not None else True


__all__ = [
    "RUNNER_OPTIONS",
    "ConversationId",
    "Format",
    "GenerationFields",
    "KeepAlive",
    "Message",
    "Messages",
    "MessagesOrNone",
    "Options",
    "Role",
    "Think",
    "native_format",
]
