"""What every request schema is made of, and the table from pydantic's errors to our stable codes.

Each body is declared once, as a pydantic model: it validates the raw bytes (``model_validate_json``:
strict types, unknown fields refused where the surface refuses them, NaN and Infinity refused, NUL
characters refused by a pattern on every text, lone surrogates refused by the JSON parser, nesting
depth bounded inside free-form values), and the OpenAPI document's schemas are generated from the
same models (``gateway.openapi``). Limits that come from the configuration (``[limits]``) are read
once, when the schemas are built, into both the validator and the document.

Errors name the field and carry the codes clients rely on (``invalid_messages``, ``invalid_role``,
``too_many_messages``...): :func:`to_api_error` maps pydantic's error location and type to them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, TypeVar, cast

from django.conf import settings
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError, core_schema

from core.errors import BadRequest
from core.values import KEEP_ALIVE_PATTERN, MODEL_NAME_MAX_LENGTH, MODEL_NAME_PATTERN

MAX_DEPTH = 32
# Every text field: no NUL character (JSON can carry one as \u0000; Ollama and PostgreSQL cannot).
NO_NUL = r"^[^\x00]*$"

Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN, max_length=MODEL_NAME_MAX_LENGTH)]
KeepAliveText = Annotated[str, StringConstraints(pattern=KEEP_ALIVE_PATTERN)]
# A number of seconds (negative = forever) or a duration; a bare numeric string is sent as a number.
KeepAlive = int | float | KeepAliveText


class Strict(BaseModel):
    """A request body: strict JSON types, unknown fields refused, no NaN or Infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, regex_engine="rust-regex")

    # How this surface words an unknown field: (code, message template with {field} and {accepted}).
    unknown_field: ClassVar[tuple[str, str]] = (
        "unknown_field",
        "Unknown field {field!r}; accepted: {accepted}.",
    )
    # Top-level field -> the code of any error inside it (when no more specific rule applies).
    field_codes: ClassVar[dict[str, str]] = {}

    def fields_set(self) -> dict[str, Any]:
        """The fields the client sent, exactly as sent (nothing added, nothing coerced)."""
        return self.model_dump(exclude_unset=True)


# --- free-form JSON values (format schemas, tool definitions, tool calls) ------------------------


def _check_json(value: Any) -> Any:
    """Inside a free-form value: bounded nesting, finite numbers, no NUL characters."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PydanticCustomError("invalid_json", f"The JSON is nested deeper than {MAX_DEPTH} levels.")
        if isinstance(item, str):
            if "\x00" in item:
                raise PydanticCustomError("invalid_text", "The value contains a NUL character.")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise PydanticCustomError("invalid_json", "Numbers must be finite.")
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    raise PydanticCustomError("invalid_text", "A key contains a NUL character.")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return value


Json = Annotated[Any, AfterValidator(_check_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]


# --- limits read from the configuration ----------------------------------------------------------


class Limit:
    """``Annotated[list[X], Limit("LIMITS_MAX_MESSAGES")]``: a bound from the configuration, read
    when the schema is built (after settings are loaded) and compiled into the validator itself, so
    the check costs nothing extra and the JSON schema states it.

    ``kind`` is "items" (a list's length), "chars" (a string's length) or "range" (an integer
    within -setting..setting).
    """

    def __init__(self, setting: str, kind: str = "items", minimum: int | None = None) -> None:
        self.setting, self.kind, self.minimum = setting, kind, minimum

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        compiled = cast(dict[str, Any], schema)  # a list, str or int schema: its constraint keys
        bound = int(getattr(settings, self.setting))
        expected = {"items": "list", "chars": "str", "range": "int"}[self.kind]
        if schema.get("type") != expected:
            found = schema.get("type")
            raise TypeError(f"Limit({self.setting!r}, {self.kind!r}) applies to {expected}, not {found}")
        if self.kind == "range":
            compiled.update(ge=-bound, le=bound)
        else:
            compiled["max_length"] = bound
            if self.minimum is not None:
                compiled["min_length"] = self.minimum
        return schema


# --- errors -> our codes ---------------------------------------------------------------------------

# Custom error types that are our codes already (raised by validators in the schemas; so is every
# "invalid_..." type, which pydantic's own types never are but for invalid_key).
OUR_CODES = {
    "invalid_json", "invalid_text", "invalid_model", "invalid_format", "unsupported_parameter",
    "invalid_conversation_id", "invalid_request_id", "unknown_action",
}  # fmt: skip


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# Parts of an error location that name a union member or a validator, not a field.
_TYPE_TAGS = {"int", "float", "str", "bool", "list", "dict", "none", "literal", "json", "any"}


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return tuple(
        part
        for part in loc
        if isinstance(part, int) or not ("-" in part or "[" in part or "'" in part or part in _TYPE_TAGS)
    )


def _most_telling(errors: list[Any]) -> Any:
    """Of a union's errors, the one that says most (a NaN, one of ours, an unknown field)."""
    for error in errors:
        if error["type"] in OUR_CODES or error["type"] in ("finite_number", "extra_forbidden"):
            return error
    return errors[0]


def to_api_error(model: type[Strict], exc: ValidationError) -> BadRequest:
    """The most telling error as a BadRequest naming the field, with the code clients rely on."""
    error = _most_telling(exc.errors(include_url=False))
    kind, loc, msg = error["type"], tuple(error["loc"]), error["msg"]
    # An unknown field's name is the client's own (it may look like a union tag): keep it as sent.
    loc = (*_clean_loc(loc[:-1]), loc[-1]) if kind == "extra_forbidden" and loc else _clean_loc(loc)
    where = _where(loc)
    if kind == "json_invalid":
        if "surrogate" in msg or "hex escape" in msg:
            return BadRequest("The request body contains a lone surrogate.", code="invalid_text")
        return BadRequest(
            f"The request body is not valid JSON: {msg.removeprefix('Invalid JSON: ')}", code="invalid_json"
        )
    if not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
        return BadRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NO_NUL:
        return BadRequest(f"{where} contains a NUL character.", code="invalid_text")
    if kind == "finite_number":
        return BadRequest(f"{where} must be a finite number.", code="invalid_json")
    if kind in OUR_CODES or (kind.startswith("invalid_") and kind != "invalid_key"):
        return BadRequest(msg, code=kind)  # raised by our own validators, with our code and words
    if kind == "extra_forbidden":
        code, template = model.unknown_field
        if len(loc) == 1:
            accepted = ", ".join(sorted(model.model_fields))
            return BadRequest(template.format(field=str(loc[0]), accepted=accepted), code=code)
        top = str(loc[0])
        return BadRequest(
            f"{_where(loc[:-1])} has unknown field {str(loc[-1])!r}.", code=model.field_codes.get(top, code)
        )
    special = _special(loc, kind, error)
    if special is not None:
        return special
    top = str(loc[0]) if loc else "body"
    code = model.field_codes.get(top, f"invalid_{top}")
    if kind == "missing":
        return BadRequest(f"Field {where!r} is required.", code=code)
    return BadRequest(f"Field {where!r}: {msg[:1].lower()}{msg[1:]}.", code=code)


def _special(loc: tuple[int | str, ...], kind: str, error: Any) -> BadRequest | None:
    """The message rules whose codes are finer than their top-level field."""
    ctx = error.get("ctx", {})
    if loc == ("messages",) and kind == "too_long":
        return BadRequest(
            f"Field 'messages' has {ctx.get('actual_length')} messages; "
            f"at most {ctx.get('max_length')} are allowed.",
            code="too_many_messages",
        )
    if len(loc) == 3 and loc[0] == "messages" and loc[2] == "role":
        return BadRequest(f"{_where(loc)} must be one of system, user, assistant, tool.", code="invalid_role")
    if len(loc) == 3 and loc[0] == "messages" and loc[2] == "content" and kind == "string_too_long":
        return BadRequest(
            f"{_where(loc)} is too long; at most {ctx.get('max_length')} characters are allowed.",
            code="message_too_long",
        )
    return None


M = TypeVar("M", bound=Strict)


def validate(model: type[M], raw: bytes | str) -> M:
    """Validate raw JSON into ``model``; a BadRequest naming the field otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise to_api_error(model, exc) from None


def validate_value(model: type[M], value: Any) -> M:
    """Validate an already-parsed value (a nested object such as an action's ``data``)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise to_api_error(model, exc) from None
