"""The API's middleware: request ids in every log line and X-Request-ID, request metrics, the host
check and safe headers, and Django's own middlewares only where they are needed. Who may call a
view is declared on the view (``gateway.http.api_view``), not here."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import iscoroutinefunction
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
from django.utils.deprecation import MiddlewareMixin

from core.logs import request_id_var
from gateway.http import json_error
from stats.metrics import endpoint_of, observe_request

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
            response = await cast(Awaitable[HttpResponseBase], get_response(request))
            response["X-Request-ID"] = rid
            return response

    else:

        def middleware(request: HttpRequest) -> HttpResponseBase:  # type: ignore[misc]
            rid = _assign(request)
            response = get_response(request)
            response["X-Request-ID"] = rid  # type: ignore[index]
            return response  # type: ignore[return-value]

    return middleware


@async_only_middleware
def MetricsMiddleware(  # noqa: N802 - Django middleware factories are named like classes
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
    """Counts and times every request for /metrics (the process's own timings)."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = await get_response(request)
        observe_request(endpoint_of(request), request.method or "", response.status_code, started)
        return response

    return middleware


# --- keeping the API's request path free of thread hops ---------------------------------------------

# Django's own middlewares are sync at heart: under ASGI each costs a thread hop per request (and the
# first hop a new thread). The API needs none of them (no sessions, no forms, CSRF-exempt views), so
# they run only where they matter: the admin, its static files, and the operator endpoint that
# accepts staff sessions.
FULL_STACK_PREFIXES = ("/admin/", "/static/", "/api/cache-stats")


class OnlyWhereNeeded(MiddlewareMixin):
    """Mixin: the Django middleware it precedes runs for FULL_STACK_PREFIXES paths only.

    The wrappers subclass Django's classes, so the admin's system checks still find them.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(FULL_STACK_PREFIXES):
            return await super().__acall__(request)
        get_response = cast(Callable[[HttpRequest], Awaitable[HttpResponseBase]], self.get_response)
        return await get_response(request)


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
        adjusted = getattr(request, "gateway_adjusted", None)
        if adjusted:  # a model's pinned or capped runner options changed what the client sent
            response["X-Gateway-Adjusted"] = "; ".join(adjusted)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return middleware
