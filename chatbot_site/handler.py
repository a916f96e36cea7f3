"""Django's ASGI handler, without a new thread for every API request.

Django runs each request inside asgiref's ``ThreadSensitiveContext``: the first thread-sensitive
call of the request (the ``request_started`` receivers, then ``response.close()``) starts a new
one-thread executor, and the context shuts it down when the request ends. Our API views are async
and do their blocking work on ``core.runtime.run_blocking``'s pool, so for them that thread was only
overhead: creating, using and joining a thread per request. API requests run without the context;
their few thread-sensitive calls go to asgiref's one shared thread. The admin and the other sync
views (``FULL_STACK_PREFIXES``) keep Django's per-request context.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler

from gateway.middleware import FULL_STACK_PREFIXES


class ApiASGIHandler(ASGIHandler):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # what Django routes on
        if scope["type"] == "http" and not path.startswith(FULL_STACK_PREFIXES):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
