"""The ASGI application: Django's HTTP app (the embedded queue worker starts with the server)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_site.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application

# These need Django set up first.
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from chatbot_site.handler import ApiASGIHandler  # noqa: E402
from core.runtime import start_process, stop_process  # noqa: E402

django_app = ApiASGIHandler()


class HttpEntry:
    """Every HTTP request enters here: the root path is set from configuration, and the server
    start-up runs on the first event (for servers without a start hook).

    daphne fills ``root_path`` from the client's ``Daphne-Root-Path`` header. Django then builds
    ``request.path`` with that prefix while it routes on ``path_info`` without it, so a forged
    prefix made any protected path look public to a check on ``request.path``. The header is
    never trusted: the prefix is ``[server] root_path`` only.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start_process(asyncio.get_running_loop())
        scope = {**scope, "root_path": settings.SERVER_ROOT_PATH}
        await self.app(scope, receive, send)


application = ProtocolTypeRouter({"http": HttpEntry(django_app)})

if "twisted.internet.reactor" in sys.modules:
    # Under daphne: start as soon as the reactor runs, so queued work is picked up without waiting
    # for a first request (callLater(0, ...) is needed: called directly it fails silently), and on
    # SIGTERM hand queued work back before the reactor stops.
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor  # twisted's stubs type the module as an interface

    reactor.callWhenRunning(lambda: reactor.callLater(0, lambda: start_process(asyncio.get_event_loop())))
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.Deferred.fromFuture(asyncio.ensure_future(stop_process()))
    )
