"""Django's ASGI handler, without a thread hop for an API request.

Django runs each request inside asgiref's ``ThreadSensitiveContext`` (a new one-thread executor
per request, shut down when it ends), sends ``request_started`` and ``request_finished`` through
``sync_to_async`` (their receivers are sync: closing old database connections, resetting the
query log, closing caches), and calls every middleware's sync ``process_view`` (CSRF's) through
it too: three thread hops per request, each also a GIL hand-over. Our API views are async and do
their blocking work on ``core.runtime.run_blocking``'s pool, whose threads manage their own
database connections, so for them all of that was overhead: under a burst of 1,000 requests the
hops were about a seventh of the event loop's time (a py-spy profile), and ``/health`` waited
behind them.

API requests therefore go to ``ApiHandler``: the API's own middlewares only
(``settings.API_MIDDLEWARE``; Django's are pass-through for them anyway, see
``gateway.middleware.OnlyWhereNeeded``), no request signals (their receivers act on the calling
thread's connections, and the event loop's thread has none: Django refuses database work in async
code), and the response closed on the loop. The admin and the other sync views
(``FULL_STACK_PREFIXES``) keep Django's handler as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http.response import HttpResponseBase
from django.urls import set_script_prefix

from gateway.middleware import FULL_STACK_PREFIXES


class ApiHandler(ASGIHandler):
    """An API request: read, routed through the API's middlewares, answered, closed."""

    def load_middleware(self, is_async: bool = False) -> None:
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            BaseHandler.load_middleware(self, is_async)
        finally:
            settings.MIDDLEWARE = full

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        try:
            if request is None:
                assert error_response is not None  # Django gives one or the other
                await self.send_response(error_response, send)
                error_response.close()
                return
            response = await self._answer(request, receive, send)
            if response is not None:
                response.close()
        finally:
            body_file.close()

    async def _answer(self, request: Any, receive: Any, send: Any) -> HttpResponseBase | None:
        """The response, sent; None when the client left first (the view is cancelled), as
        Django's own handler does."""

        async def process_request() -> HttpResponseBase:
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while it was sent
            return response

        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        answering = asyncio.create_task(process_request())
        await asyncio.wait((listening, answering), return_when=asyncio.FIRST_COMPLETED)
        for task in (listening, answering):
            if task.done():
                try:
                    task.result()
                except (RequestAborted, asyncio.CancelledError):
                    pass
            else:
                task.cancel()
                try:
                    await task
                except (RequestAborted, asyncio.CancelledError):
                    pass
        if answering.cancelled():
            return None
        return answering.result()


class ApiASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.api = ApiHandler()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # what Django routes on
        if scope["type"] == "http" and not path.startswith(FULL_STACK_PREFIXES):
            await self.api.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
