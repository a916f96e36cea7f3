"""Request ids in every log line and X-Request-ID; Django's own middlewares only where they are needed."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.decorators import async_only_middleware, sync_and_async_middleware

from chat import rate_limits
from chat.auth import owner_for_key
from chat.errors import json_error
from chat.logs import request_id_var

# A client may pass its own id (a proxy's, say) if it looks like one; anything else is replaced.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _assign(request: HttpRequest) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex[:16]
    request_id_var.set(rid)
    request.request_id = rid  # type: ignore[attr-defined]
    return rid


@sync_and_async_middleware
def RequestIdMiddleware(  # noqa: N802 - Django middleware factories are named like classes
    get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
) -> Callable:
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            rid = _assign(request)
            response = await get_response(request)  # type: ignore[misc]
            response["X-Request-ID"] = rid
            return response

    else:

        def middleware(request: HttpRequest) -> HttpResponseBase:  # type: ignore[misc]
            rid = _assign(request)
            response = get_response(request)
            response["X-Request-ID"] = rid  # type: ignore[index]
            return response  # type: ignore[return-value]

    return middleware


# --- keeping the API's request path free of thread hops ---------------------------------------------

# Django's own middlewares are sync at heart: under ASGI each costs a thread hop per request (and the
# first hop a new thread). The API needs none of them (no sessions, no forms, CSRF-exempt views), so
# they run only where they matter: the admin, its static files, and the operator endpoint that
# accepts staff sessions.
FULL_STACK_PREFIXES = ("/admin/", "/static/", "/api/cache-stats")


class OnlyWhereNeeded:
    """Mixin: the Django middleware it precedes runs for FULL_STACK_PREFIXES paths only.

    The wrappers subclass Django's classes, so the admin's system checks still find them.
    """

    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(FULL_STACK_PREFIXES):
            return await super().__acall__(request)  # type: ignore[misc]
        return await self.get_response(request)


class Security(OnlyWhereNeeded, SecurityMiddleware):
    pass


class Sessions(OnlyWhereNeeded, SessionMiddleware):
    pass


class Common(OnlyWhereNeeded, CommonMiddleware):
    pass


class Csrf(OnlyWhereNeeded, CsrfViewMiddleware):
    pass


class Authentication(OnlyWhereNeeded, AuthenticationMiddleware):
    pass


class Messages(OnlyWhereNeeded, MessageMiddleware):
    pass


class Clickjacking(OnlyWhereNeeded, XFrameOptionsMiddleware):
    pass


@async_only_middleware
def ApiHeadersMiddleware(  # noqa: N802 - Django middleware factories are named like classes
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
    """What the API keeps from the skipped middlewares: the ALLOWED_HOSTS check and safe headers."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        try:
            request.get_host()
        except DisallowedHost:
            return json_error(400, "bad_host", "The Host header is not one this service answers to.")
        response = await get_response(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return middleware


# --- API keys and rate limits ------------------------------------------------------------------------

_PUBLIC = ("/health", "/api/schema", "/admin/", "/static/")


def _needs_key(request: HttpRequest) -> bool:
    # path_info is what the URL resolver routes on: the decision is made on the same path.
    path = request.path_info
    if path.startswith(_PUBLIC):
        return False
    if path == "/api/cache-stats" and request.method == "POST":
        return False  # operators: a staff session or the admin token (chat.auth.require_operator)
    return path.startswith(("/api/", "/v1/")) or path == "/metrics"


def _unauthorized(message: str, code: str) -> HttpResponseBase:
    response = json_error(401, code, message)
    response["WWW-Authenticate"] = 'Bearer realm="chatbot-backend"'
    return response


@async_only_middleware
def ApiKeyMiddleware(  # noqa: N802 - Django middleware factories are named like classes
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
    """With ``[security] api_keys`` set, the API needs ``Authorization: Bearer <key>``; the key's
    name becomes the request's owner. Then the per-owner rate limits apply."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        request.api_owner = ""  # type: ignore[attr-defined]
        if not _needs_key(request):
            return await get_response(request)
        if settings.API_KEYS:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                return _unauthorized(
                    "This API needs an API key: Authorization: Bearer <key>.", "authentication_required"
                )
            owner = owner_for_key(presented.strip())
            if owner is None:
                return _unauthorized("The API key is not valid.", "invalid_api_key")
            request.api_owner = owner  # type: ignore[attr-defined]
        identity = request.api_owner or f"addr:{request.META.get('REMOTE_ADDR', '')}"  # type: ignore[attr-defined]
        limited = await rate_limits.check_rate(identity)
        if limited is not None:
            return limited
        response = await get_response(request)
        if response.streaming and settings.MAX_CONCURRENT_STREAMS:
            return await rate_limits.limit_stream(identity, response)
        return response

    return middleware
