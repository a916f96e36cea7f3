"""Counts and times every request for /metrics (the process's own timings)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import async_only_middleware

from stats.metrics import endpoint_of, observe_request


@async_only_middleware
def MetricsMiddleware(  # noqa: N802 - Django middleware factories are named like classes
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
    async def middleware(request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = await get_response(request)
        observe_request(endpoint_of(request), request.method or "", response.status_code, started)
        return response

    return middleware
