"""What every API view shares, declared on the view (``@api_view``): its methods, who may call it
(public, an API key, an operator), its body and query schemas, and the error dialect it answers in.

The declaration is the rule: the OpenAPI document reads the same declarations, and authentication
is decided for the view the URL resolved to, never from a list of paths.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt

from core.errors import ApiError, BadRequest, PayloadTooLarge, TooManyRequests, Unauthorized, dependency_error
from core.owners import rules_for
from gateway import limits
from gateway.auth import authenticate, require_operator
from gateway.schemas.base import Strict, validate
from gateway.schemas.params import Query

logger = logging.getLogger(__name__)
AsyncView = Callable[..., Awaitable[HttpResponseBase]]
# What URL patterns take: Django serves async views, its stubs only know sync ones.
View = Callable[..., Any]
Render = Callable[[ApiError], JsonResponse]
M = TypeVar("M", bound=Strict)

# --- errors, in each surface's own shape ---------------------------------------------------------


def _with_retry_after(response: JsonResponse, exc: ApiError) -> JsonResponse:
    """The headers an error carries, whatever the dialect."""
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        response["WWW-Authenticate"] = 'Bearer realm="chatbot-backend"'
    return response


def error_response(exc: ApiError) -> JsonResponse:
    """Ours: ``{"error": "<sentence>", "code": "<stable_snake_case>"}``."""
    return _with_retry_after(JsonResponse(exc.as_dict(), status=exc.status), exc)


# Ollama's own answer when its queue is full (two spaces, as Ollama writes it).
OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def ollama_error(exc: ApiError) -> JsonResponse:
    """Ollama's shape, ``{"error": "..."}``; a full queue is Ollama's own 503 busy."""
    if isinstance(exc, TooManyRequests) and exc.code == "queue_full":
        return _with_retry_after(JsonResponse({"error": OLLAMA_BUSY}, status=503), exc)
    return _with_retry_after(JsonResponse({"error": exc.message}, status=exc.status), exc)


def openai_error(exc: ApiError) -> JsonResponse:
    """OpenAI's shape, so the SDKs show the reason."""
    kind = "invalid_request_error" if exc.status < 500 else "api_error"
    if exc.status == 429:
        kind = "rate_limit_error"
    body = {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}
    return _with_retry_after(JsonResponse(body, status=exc.status), exc)


ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
    529: "overloaded_error",
}  # fmt: skip


def anthropic_error(exc: ApiError) -> JsonResponse:
    """Anthropic's shape, with its error types by status."""
    body = {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(exc.status, "api_error"), "message": exc.message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }
    return _with_retry_after(JsonResponse(body, status=exc.status), exc)


def json_error(status: int, code: str, message: str) -> JsonResponse:
    """An error response for the framework's own failures (404, 500, bad host...)."""
    return error_response(ApiError(message, code=code, status=status))


# --- bodies --------------------------------------------------------------------------------------


def read_body(request: HttpRequest) -> bytes:
    """The raw body; 413 beyond ``[limits] max_body_bytes``."""
    too_large = PayloadTooLarge(
        f"The request body exceeds {settings.LIMITS_MAX_BODY_BYTES} bytes.", code="body_too_large"
    )
    try:
        raw = request.body
    except RequestDataTooBig:
        raise too_large from None
    except RawPostDataException:  # pragma: no cover - the body was consumed as a stream
        raise BadRequest("The request body could not be read.", code="invalid_body") from None
    if len(raw) > settings.LIMITS_MAX_BODY_BYTES:
        raise too_large
    return raw


def parse_body(request: HttpRequest, model: type[M]) -> M:
    """The body validated by its schema; 413 if too large, 400 naming the field otherwise."""
    return validate(model, read_body(request))


# --- views ---------------------------------------------------------------------------------------

PUBLIC, KEY, OPERATOR = "public", "key", "operator"
# An operator (admin token or staff session) when the request presents one, else a key.
KEY_OR_OPERATOR = "key_or_operator"
_BODYLESS = ("GET", "HEAD", "DELETE", "OPTIONS")


def owner_of(request: HttpRequest) -> str:
    """Who a request acts for: requests, conversations and cached answers are scoped to it."""
    return getattr(request, "api_owner", "")


@dataclass(frozen=True)
class Endpoint:
    """A view's declaration, read by the wrapper and by the OpenAPI document."""

    methods: tuple[str, ...]
    auth: Mapping[str, str]  # method -> PUBLIC | KEY | OPERATOR (KEY for any other)
    body: Mapping[str, type[Strict]] = field(default_factory=dict)
    query: Mapping[str, type[Query]] = field(default_factory=dict)
    streams: bool = False  # always answers with a stream (else: when the body asks for one)

    def auth_for(self, method: str) -> str:
        return self.auth.get(method, self.auth.get("*", KEY))


def _per_method(value: Any, methods: tuple[str, ...], *, bodies: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return {m: value for m in methods if not (bodies and m in _BODYLESS)}


async def _authorize(request: HttpRequest, rule: str) -> str:
    """Apply the view's rule; returns the identity rate limits count against (KEY only)."""
    request.api_owner = ""  # type: ignore[attr-defined]
    if rule == PUBLIC:
        return ""
    if rule == OPERATOR or (rule == KEY_OR_OPERATOR and request.headers.get("X-Admin-Token")):
        request.operator = await require_operator(request)  # type: ignore[attr-defined]
        return ""
    owner = authenticate(request)
    request.api_owner = owner  # type: ignore[attr-defined]
    identity = owner or f"addr:{request.META.get('REMOTE_ADDR', '')}"
    await limits.check_rate(identity)
    return identity


def api_view(
    *methods: str,
    render: Render = error_response,
    auth: str | Mapping[str, str] = KEY,
    body: type[Strict] | Mapping[str, type[Strict]] | None = None,
    query: type[Query] | Mapping[str, type[Query]] | None = None,
    streams: bool = False,
) -> Callable[[AsyncView], View]:
    """Declare an async view as an API endpoint.

    ``auth``: who may call it (one rule, or one per method; KEY by default: an API key when keys
    are configured, then the rate limits). ``body`` and ``query``: the schemas its input is
    validated with, passed to the view as ``body=`` and ``query=``. Errors are rendered by
    ``render`` (our JSON shape by default; each surface passes its own dialect). No CSRF: the API
    is called with JSON bodies and bearer keys, not by forms carrying Django's session cookie.
    """
    endpoint = Endpoint(
        methods=methods,
        auth={"*": auth} if isinstance(auth, str) else dict(auth),
        body=_per_method(body, methods, bodies=True),
        query=_per_method(query, methods, bodies=False),
        streams=streams,
    )

    def decorate(view: AsyncView) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            method = request.method or ""
            try:
                identity = await _authorize(request, endpoint.auth_for(method))
                if method not in methods:
                    raise ApiError(
                        f"{method} is not allowed here; use {', '.join(methods)}.",
                        code="method_not_allowed",
                        status=405,
                    )
                if method in endpoint.body:
                    kwargs["body"] = parse_body(request, endpoint.body[method])
                if method in endpoint.query:
                    kwargs["query"] = endpoint.query[method].of(request.GET)
                streams = endpoint.streams or bool(getattr(kwargs.get("body"), "stream", False))
                stream_limit = rules_for(identity).max_streams if identity and streams else 0
                if not stream_limit:
                    return await view(request, *args, **kwargs)
                # The slot is taken before anything is queued: a refused stream never runs.
                await limits.acquire_stream(identity, stream_limit)
                try:
                    response = await view(request, *args, **kwargs)
                except BaseException:
                    await limits.release_stream(identity)
                    raise
                if not response.streaming:
                    await limits.release_stream(identity)
                    return response
                return limits.held_while_streaming(identity, response)
            except ApiError as exc:
                response = render(exc)
                if exc.status == 405:
                    response["Allow"] = ", ".join(methods)
                return response
            except Exception as exc:
                unavailable = dependency_error(exc)
                if unavailable is None:
                    raise
                logger.warning("%s %s: %s", method, request.path, unavailable.message)
                return render(unavailable)

        wrapper.endpoint = endpoint  # type: ignore[attr-defined]
        return csrf_exempt(wrapper)

    return decorate
