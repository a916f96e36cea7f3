"""Every request body, declared once as a pydantic model (validation and the OpenAPI document)."""

from gateway.schemas.base import Strict, to_api_error, validate, validate_value
from gateway.schemas.chat import ChatOptimizedBody, QueueBody
from gateway.schemas.ollama import EmbedBody, OllamaChatBody, OllamaGenerateBody, ShowBody
from gateway.schemas.openai import ChatCompletionsBody
from gateway.schemas.ops import CacheAction, WarmModelData

# Every body the API validates, by the name its schema has in the OpenAPI document.
BODIES: dict[str, type[Strict]] = {
    "ChatRequest": ChatOptimizedBody,
    "QueueRequest": QueueBody,
    "OllamaChatRequest": OllamaChatBody,
    "OllamaGenerateRequest": OllamaGenerateBody,
    "OllamaEmbedRequest": EmbedBody,
    "OllamaShowRequest": ShowBody,
    "OpenAIChatRequest": ChatCompletionsBody,
    "CacheAction": CacheAction,
}

__all__ = [
    "BODIES",
    "CacheAction",
    "ChatCompletionsBody",
    "ChatOptimizedBody",
    "EmbedBody",
    "OllamaChatBody",
    "OllamaGenerateBody",
    "QueueBody",
    "ShowBody",
    "Strict",
    "WarmModelData",
    "to_api_error",
    "validate",
    "validate_value",
]
