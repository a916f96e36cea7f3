"""Query strings and path parameters, declared like the bodies."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict
from pydantic_core import PydanticCustomError

from gateway.schemas.base import Strict, Text, validate_value
from gateway.schemas.generation import ConversationId


def _request_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise PydanticCustomError(
            "invalid_request_id", "Query parameter 'requestId' must be a UUID."
        ) from None


RequestId = Annotated[Text, AfterValidator(_request_id)]


class Query(Strict):
    """Query parameters: strings, unknown ones ignored (as browsers and proxies add their own)."""

    model_config = ConfigDict(**{**Strict.model_config, "extra": "ignore"})

    @classmethod
    def of(cls, query: Any) -> Any:
        """Validate a QueryDict (the last value of each parameter)."""
        return validate_value(cls, {key: query.get(key) for key in query})


class RequestQuery(Query):
    """``?requestId=<uuid>`` (required)."""

    field_codes: ClassVar[dict[str, str]] = {"requestId": "missing_request_id"}
    requestId: RequestId  # noqa: N815 - the query parameter's name


class OptionalRequestQuery(Query):
    """``GET /api/chat-queue``: a request's status with ``requestId``, the overview without."""

    requestId: RequestId | None = None  # noqa: N815 - the query parameter's name


def _existing_conversation(value: str) -> str:
    if value == "new":  # "new" starts a conversation in a chat body; a path names an existing one
        raise PydanticCustomError("invalid_conversation_id", "A conversation id must be a UUID.")
    return value


class ConversationPath(Strict):
    """``/api/conversations/<conversation_id>``: a UUID."""

    conversation_id: Annotated[ConversationId, AfterValidator(_existing_conversation)]

    @classmethod
    def of(cls, value: str) -> str:
        conversation_id: str = validate_value(cls, {"conversation_id": value}).conversation_id
        return conversation_id


class HealthQuery(Query):
    """``/health?deep=1``: probe every dependency."""

    deep: str = ""  # any value; only 1, true or yes mean deep

    @property
    def is_deep(self) -> bool:
        return self.deep.lower() in ("1", "true", "yes")


class UsageQuery(Query):
    """``/api/usage?window=hour|day|month`` (default day)."""

    field_codes: ClassVar[dict[str, str]] = {"window": "invalid_window"}
    window: Literal["hour", "day", "month"] = "day"
