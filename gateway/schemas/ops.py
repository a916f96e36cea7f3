"""The operators' body: ``POST /api/cache-stats``."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from gateway.schemas.base import JsonObject, ModelName, Strict, Text
from gateway.schemas.generation import KeepAlive

ACTIONS = ("clear", "clear_response_cache", "clear_conversation_cache", "warm_model")


def _known_action(value: str) -> str:
    if value not in ACTIONS:
        raise PydanticCustomError(
            "unknown_action", f"Unknown action {value!r}; valid actions: {', '.join(ACTIONS)}."
        )
    return value


class CacheAction(Strict):
    """An operator action; ``data`` is for warm_model (``WarmModelData``), ignored otherwise."""

    model_config = {**Strict.model_config, "extra": "ignore"}
    field_codes: ClassVar[dict[str, str]] = {"action": "unknown_action", "data": "invalid_data"}

    action: Annotated[Text, AfterValidator(_known_action), WithJsonSchema({"enum": list(ACTIONS)})]
    data: JsonObject | None = None


class WarmModelData(Strict):
    field_codes: ClassVar[dict[str, str]] = {"model": "invalid_model", "keep_alive": "invalid_keep_alive"}
    unknown_field: ClassVar[tuple[str, str]] = ("invalid_data", "Unknown data field {field!r}.")

    model: ModelName | None = None
    keep_alive: KeepAlive | None = None
    all: bool | None = None  # warm every Ollama server that has the model, not only the best one
