"""Every request body, declared once as a pydantic model (validation and the OpenAPI document)."""

from gateway.schemas.anthropic import MessagesBody
from gateway.schemas.base import Strict, to_api_error, validate, validate_value
from gateway.schemas.chat import ChatOptimizedBody, QueueBody
from gateway.schemas.ollama import EmbedBody, EmbeddingsBody, OllamaChatBody, OllamaGenerateBody, ShowBody
from gateway.schemas.openai import ChatCompletionsBody, CompletionsBody, OpenAIEmbeddingsBody
from gateway.schemas.ops import CacheAction, WarmModelData
from gateway.schemas.responses import ResponsesBody

__all__ = [
    "CacheAction",
    "ChatCompletionsBody",
    "ChatOptimizedBody",
    "CompletionsBody",
    "EmbedBody",
    "EmbeddingsBody",
    "MessagesBody",
    "OllamaChatBody",
    "OllamaGenerateBody",
    "OpenAIEmbeddingsBody",
    "QueueBody",
    "ResponsesBody",
    "ShowBody",
    "Strict",
    "WarmModelData",
    "to_api_error",
    "validate",
    "validate_value",
]
