"""Bodies of OpenAI's API as Ollama's OpenAI layer reads them (``openai/openai.go``,
``middleware/openai.go``), and the native request each becomes.

As that layer does, fields it does not know are ignored; the translation (messages, content parts,
tool calls, reasoning effort, the sampling defaults) follows it, so a client gets through the gateway
what it gets from Ollama's own ``/v1``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from core.errors import BadRequest
from gateway.schemas.base import Json, JsonObject, Limit, ModelName, Strict, Text
from gateway.schemas.generation import Number, Stop

OPENAI_CODES = {
    "model": "invalid_model",
    "messages": "invalid_messages",
    "stream": "invalid_stream",
    "stream_options": "invalid_stream",
    "response_format": "invalid_format",
    "n": "unsupported_parameter",
    "tools": "invalid_tools",
    "reasoning_effort": "invalid_reasoning",
    "reasoning": "invalid_reasoning",
    **{
        name: "invalid_options"
        for name in (
            "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "max_tokens",
            "max_completion_tokens", "stop", "logprobs", "top_logprobs",
        )
    },
}  # fmt: skip
IGNORE_UNKNOWN = ConfigDict(**{**Strict.model_config, "extra": "ignore"})

# openai.thinkFromReasoningEffort
EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
    "xhigh": "max", "ultra": "max",
}  # fmt: skip


def _effort(value: str) -> str:
    if value and value not in EFFORT_TO_THINK:
        raise PydanticCustomError(
            "invalid_reasoning",
            f'invalid reasoning value: "{value}" (must be "minimal", "low", "medium", "high", "xhigh", '
            '"ultra", "max", or "none")',
        )
    return value


Effort = Annotated[Text, AfterValidator(_effort)]


class ImageUrl(Strict):
    model_config = IGNORE_UNKNOWN
    url: Text


class ContentPart(Strict):
    model_config = IGNORE_UNKNOWN
    type: Literal["text", "image_url", "input_audio"]
    text: Text | None = None
    image_url: ImageUrl | Text | None = None
    input_audio: JsonObject | None = None


class ToolCallFunction(Strict):
    model_config = IGNORE_UNKNOWN
    name: Text = ""
    arguments: Text = ""


class ToolCall(Strict):
    model_config = IGNORE_UNKNOWN
    id: Text | None = None
    type: Text | None = None
    function: ToolCallFunction = Field(default_factory=ToolCallFunction)


class OpenAIMessage(Strict):
    """A chat message of OpenAI's API (fields Ollama's layer does not read are ignored)."""

    model_config = IGNORE_UNKNOWN

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] | list[ContentPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None
    reasoning: Text | None = None


class StreamOptions(Strict):
    model_config = IGNORE_UNKNOWN
    include_usage: bool = False


class JsonSchemaSpec(Strict):
    model_config = IGNORE_UNKNOWN
    schema_: JsonObject | None = Field(default=None, alias="schema")


class ResponseFormat(Strict):
    model_config = IGNORE_UNKNOWN
    type: Text
    json_schema: JsonSchemaSpec | None = None

    def ollama_format(self) -> Any:
        """Ollama's ``format``: "json", a JSON schema, or None for text."""
        kind = self.type.strip().lower()
        if kind == "json_object":
            return "json"
        if kind == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return None


class Reasoning(Strict):
    model_config = IGNORE_UNKNOWN
    effort: Effort | None = None


def _only_one(value: int) -> int:
    if value != 1:
        raise PydanticCustomError("unsupported_parameter", "Only n=1 is supported.")
    return value


def native_message(role: str, content: str = "", **fields: Any) -> dict[str, Any]:
    """api.Message as Ollama marshals it (content always, the rest when non-empty)."""
    out: dict[str, Any] = {"role": role, "content": content}
    for key in ("thinking", "images", "tool_calls", "tool_name", "tool_call_id"):
        if fields.get(key):
            out[key] = fields[key]
    return out


def decode_image_url(url: str) -> str:
    """A base64 data URL as Ollama's ``images`` (re-encoded), as openai.decodeImageURL reads it."""
    if url.startswith(("http://", "https://")):
        raise BadRequest(
            "image URLs are not currently supported, please use base64 encoded data instead",
            code="invalid_image",
        )
    prefixes = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))
    prefix = next((p for p in prefixes if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest("invalid image input", code="invalid_image")
    try:
        data = base64.b64decode(url[len(prefix) :].replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid image input", code="invalid_image") from None
    return base64.b64encode(data).decode()


def native_tool_calls(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    """openai.FromCompletionToolCall: arguments, a JSON string on OpenAI's wire, become an object."""
    out = []
    for call in calls or []:
        try:
            arguments = json.loads(call.function.arguments or "")
        except ValueError:
            raise BadRequest("invalid tool call arguments", code="invalid_tool_calls") from None
        entry: dict[str, Any] = {"function": {"index": 0, "name": call.function.name, "arguments": arguments}}
        if call.id:
            entry = {"id": call.id, **entry}
        out.append(entry)
    return out


class ChatCompletionsBody(Strict):
    """``POST /v1/chat/completions``."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = OPENAI_CODES

    model: Literal[""] | ModelName | None = None  # "" or null: the default model
    messages: Annotated[list[OpenAIMessage], Limit("LIMITS_MAX_MESSAGES", minimum=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Annotated[int, AfterValidator(_only_one)] | None = None
    tools: list[JsonObject] | None = None
    tool_choice: Json = None  # accepted; Ollama's layer ignores it
    parallel_tool_calls: bool | None = None  # accepted; Ollama's layer ignores it
    reasoning_effort: Effort | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: Json = None
    metadata: Json = None
    store: Json = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    stop: Stop | None = None

    def native_messages(self) -> list[dict[str, Any]]:
        """openai.FromChatRequest's messages: one native message per content part, tool names
        found from the calls they answer."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            role = "system" if message.role == "developer" else message.role
            tool_name = ""
            if role == "tool":
                tool_name = message.name or self._tool_name(message.tool_call_id)
            thinking = message.reasoning or ""
            calls = native_tool_calls(message.tool_calls)
            content = message.content
            if isinstance(content, str):
                out.append(
                    native_message(
                        role,
                        content,
                        thinking=thinking,
                        tool_calls=calls,
                        tool_name=tool_name,
                        tool_call_id=message.tool_call_id,
                    )
                )
            elif isinstance(content, list):
                for part in content:
                    out.append(self._part(role, part))
                if out and calls:
                    last = out[-1]
                    last.update(
                        native_message(
                            last["role"],
                            last["content"],
                            images=last.get("images"),
                            thinking=thinking,
                            tool_calls=calls,
                            tool_name=tool_name,
                            tool_call_id=message.tool_call_id,
                        )
                    )
            else:
                if message.tool_calls is None:
                    raise BadRequest("invalid message content type: <nil>", code="invalid_messages")
                out.append(
                    native_message(
                        role, thinking=thinking, tool_calls=calls, tool_call_id=message.tool_call_id
                    )
                )
        return out

    @staticmethod
    def _part(role: str, part: ContentPart) -> dict[str, Any]:
        if part.type == "text":
            if part.text is None:
                raise BadRequest("invalid message format", code="invalid_messages")
            return native_message(role, part.text)
        if part.type == "image_url":
            url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
            if url is None:
                raise BadRequest("invalid message format", code="invalid_messages")
            return native_message(role, images=[decode_image_url(url)])
        data = (part.input_audio or {}).get("data")
        if not isinstance(data, str):
            raise BadRequest("invalid input_audio format: missing data", code="invalid_messages")
        return native_message(role, images=[data])

    def _tool_name(self, call_id: str | None) -> str:
        for message in reversed(self.messages):
            for call in message.tool_calls or []:
                if call_id and call.id == call_id:
                    return call.function.name
        return ""

    def native_options(self) -> dict[str, Any]:
        """openai.FromChatRequest's options: Ollama's layer samples at temperature 1 and top_p 1
        unless told otherwise."""
        options: dict[str, Any] = {}
        if isinstance(self.stop, str):
            options["stop"] = [self.stop]
        elif self.stop:
            options["stop"] = list(self.stop)
        limit = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        if limit is not None:
            options["num_predict"] = limit
        options["temperature"] = self.temperature if self.temperature is not None else 1.0
        for name in ("seed", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        options["top_p"] = self.top_p if self.top_p is not None else 1.0
        return dict(sorted(options.items()))

    def think(self) -> bool | str | None:
        effort = self.reasoning.effort if self.reasoning is not None else self.reasoning_effort
        return EFFORT_TO_THINK[effort] if effort else None

    def native(self, model: str) -> dict[str, Any]:
        """The native /api/chat request Ollama's layer would build (``stream`` added by the client)."""
        out: dict[str, Any] = {"model": model, "messages": self.native_messages()}
        fmt = self.response_format.ollama_format() if self.response_format else None
        if fmt is not None:
            out["format"] = fmt
        if self.tools:
            out["tools"] = self.tools
        out["options"] = self.native_options()
        think = self.think()
        if think is not None:
            out["think"] = think
        if self.logprobs:
            out["logprobs"] = True
        if self.top_logprobs:
            out["top_logprobs"] = self.top_logprobs
        return out

    def samples(self) -> bool:
        return self.seed is None and self.native_options()["temperature"] != 0


class CompletionsBody(Strict):
    """``POST /v1/completions`` (openai.FromCompleteRequest)."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = {
        **OPENAI_CODES,
        "prompt": "invalid_prompt",
        "suffix": "invalid_prompt",
    }

    model: Literal[""] | ModelName | None = None
    prompt: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] = ""
    suffix: Annotated[Text, Limit("LIMITS_MAX_MESSAGE_CHARS", "chars")] = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None
    stop: Stop | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    n: Annotated[int, AfterValidator(_only_one)] | None = None
    user: Json = None

    def native(self, model: str) -> dict[str, Any]:
        """The native /api/generate request Ollama's layer builds (``stream`` added by the client)."""
        options: dict[str, Any] = {}
        if isinstance(self.stop, str):
            options["stop"] = [self.stop]
        elif self.stop:
            options["stop"] = list(self.stop)
        if self.max_tokens is not None:
            options["num_predict"] = self.max_tokens
        options["temperature"] = self.temperature if self.temperature is not None else 1.0
        if self.seed is not None:
            options["seed"] = self.seed
        options["frequency_penalty"] = self.frequency_penalty or 0.0
        options["presence_penalty"] = self.presence_penalty or 0.0
        options["top_p"] = self.top_p or 1.0
        out: dict[str, Any] = {"model": model, "prompt": self.prompt}
        if self.suffix:
            out["suffix"] = self.suffix
        out["options"] = dict(sorted(options.items()))
        if self.logprobs:
            out["logprobs"] = True
            out["top_logprobs"] = self.logprobs
        return out

    def samples(self) -> bool:
        return self.seed is None and self.temperature != 0


EmbeddingInput = (
    Annotated[Text, Field(max_length=1_000_000)]
    | Annotated[list[Text], Field(max_length=4096)]
    | Annotated[list[int], Field(max_length=1_000_000)]
    | Annotated[list[list[int]], Field(max_length=4096)]
)


def _encoding(value: str) -> str:
    if value and value.lower() not in ("float", "base64"):
        raise PydanticCustomError(
            "invalid_encoding_format",
            f"Invalid value for 'encoding_format' = {value}. Supported values: ['float', 'base64'].",
        )
    return value.lower()


class OpenAIEmbeddingsBody(Strict):
    """``POST /v1/embeddings``: ``input`` a string or a list, ``encoding_format`` float or base64."""

    model_config = IGNORE_UNKNOWN
    field_codes: ClassVar[dict[str, str]] = {
        **OPENAI_CODES,
        "input": "invalid_input",
        "dimensions": "invalid_input",
    }

    model: ModelName
    input: EmbeddingInput
    encoding_format: Annotated[Text, AfterValidator(_encoding)] = ""
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Json = None

    def native(self) -> dict[str, Any]:
        """The native /api/embed request Ollama's layer builds."""
        text = [""] if self.input == "" else self.input
        if text == []:
            raise BadRequest("invalid input", code="invalid_input")
        out: dict[str, Any] = {"model": self.model, "input": text}
        if self.dimensions:
            out["dimensions"] = self.dimensions
        return out
