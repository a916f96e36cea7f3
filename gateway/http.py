"""Small helpers every JSON view shares: allowed methods (JSON 405) and CSRF exemption."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from chat.errors import ApiError, error_response

AsyncView = Callable[..., Awaitable[HttpResponseBase]]


def owner_of(request: HttpRequest) -> str:
    """Who a request acts for: requests, conversations and cached answers are scoped to it."""
    return getattr(request, "api_owner", "")


def api_view(
    *methods: str, render: Callable[[ApiError], HttpResponseBase] = error_response
) -> Callable[[AsyncView], AsyncView]:
    """Mark an async view as an API endpoint: only ``methods``, errors rendered by ``render``
    (our JSON shape by default; the Ollama and OpenAI surfaces pass their own), no CSRF.

    The API is called by scripts and front-ends with JSON bodies (and, once configured, bearer
    keys), not by forms carrying Django's session cookie, so CSRF tokens do not apply.
    """

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in methods:
                    raise ApiError(
                        f"{request.method} is not allowed here; use {', '.join(methods)}.",
                        code="method_not_allowed",
                        status=405,
                    )
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                response = render(exc)
                if exc.status == 405:
                    response["Allow"] = ", ".join(methods)
                return response

        return csrf_exempt(wrapper)

    return decorate
