"""Request ids: one per request, in every log line written while handling it and in X-Request-ID."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# A client may pass its own id (a proxy's, say) if it looks like one; anything else is replaced.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


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
