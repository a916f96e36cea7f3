"""The exception tree. Every error a client can see is an :class:`ApiError`: HTTP status, stable
snake_case code, a human sentence; each surface renders it in its own dialect (``gateway.http``).

    ApiError
    ├── BadRequest            400 bad_request (and the field-naming invalid_* codes)
    ├── Unauthorized          401 authentication_required, invalid_api_key (WWW-Authenticate)
    ├── NotFound              404 not_found
    ├── Conflict              409 conflict
    ├── PayloadTooLarge       413 payload_too_large
    ├── TooManyRequests       429 too_many_requests (queue_full, rate_limited, too_many_streams)
    │   ├── OwnerLimit        429 owner_pending_limit (an owner's pending requests)
    │   └── QuotaExceeded     429 quota_exceeded (an owner's tokens or GPU seconds in a window)
    └── OllamaError           502 ollama_error: raised only at the Ollama client boundary
        ├── OllamaUnavailable 502 ollama_unavailable (refused, reset, DNS)
        ├── OllamaTimeout     504 ollama_timeout (connect, first token, idle, whole generation)
        ├── OllamaModelNotFound 404 model_not_found
        ├── OllamaBadResponse 502 ollama_bad_response (malformed or cut stream)
        ├── OllamaRejected    400 ollama_rejected (Ollama's own 400, its words)
        └── OllamaBusy        503 ollama_busy, Retry-After
    Unavailable               503 database_unavailable, redis_unavailable: a dependency of the
                              gateway itself is down or frozen (``dependency_error``), Retry-After

Ollama's failures are translated into the ``Ollama*`` classes in ``core.ollama``; nothing above it
sees httpx.
"""

from __future__ import annotations

import sys


class ApiError(Exception):
    """An error a client should see: HTTP status, stable code, human sentence."""

    status: int = 400
    code: str = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after

    def as_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    """No API key, or a wrong one: answered with ``WWW-Authenticate: Bearer``."""

    status, code = 401, "authentication_required"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"


class OwnerLimit(TooManyRequests):
    status, code = 429, "owner_pending_limit"


class QuotaExceeded(TooManyRequests):
    status, code = 429, "quota_exceeded"


class OllamaError(ApiError):
    """Ollama answered with an error we have no better name for."""

    status, code = 502, "ollama_error"


class OllamaUnavailable(OllamaError):
    status, code = 502, "ollama_unavailable"


class OllamaTimeout(OllamaError):
    status, code = 504, "ollama_timeout"


class OllamaModelNotFound(OllamaError):
    status, code = 404, "model_not_found"


class OllamaBadResponse(OllamaError):
    status, code = 502, "ollama_bad_response"


class OllamaRejected(OllamaError):
    """Ollama refused the request itself (400): its words are the message, as Ollama wrote them."""

    status, code = 400, "ollama_rejected"


class OllamaBusy(OllamaError):
    status, code = 503, "ollama_busy"
    # Ollama sends no Retry-After with its 503; a short back-off is what its own clients do.
    retry_after = 2


def error_from_code(code: str, message: str) -> ApiError:
    """Rebuild the error a job failed with (stored as code + message) with its HTTP status."""
    for cls in _all_subclasses(ApiError):
        if cls.code == code:
            return cls(message)
    if code == "worker_lost":
        return ApiError(message, code=code, status=503)
    return ApiError(message, code=code or "failed", status=502)


class Unavailable(ApiError):
    status, code, retry_after = 503, "service_unavailable", 2


def dependency_error(exc: BaseException) -> ApiError | None:
    """The 503 naming the dependency behind ``exc`` (the database, Redis), or None when ``exc`` is
    not a dependency's failure. Connect and statement timeouts on both make a frozen one fail fast,
    so this is what a client sees instead of a long wait or a 500."""
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return Unavailable(
            f"The gateway's database is unavailable ({type(exc).__name__}); try again shortly.",
            code="database_unavailable",
        )
    redis = sys.modules.get("redis.exceptions")  # imported only where Redis is used
    if redis is not None and isinstance(exc, redis.RedisError):
        return Unavailable(
            f"The gateway's Redis is unavailable ({type(exc).__name__}); try again shortly.",
            code="redis_unavailable",
        )
    return None


def _all_subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found
