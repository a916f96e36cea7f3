"""The ASGI application daphne serves: Django's HTTP app plus the background parts of the process."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_site.settings")
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402 - needs Django set up first

from chatbot_site.runtime import start_process  # noqa: E402


class StartOnFirstEvent:
    """Runs the process start-up on the first ASGI event, for servers without a start hook."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start_process(asyncio.get_running_loop())
        await self.app(scope, receive, send)


application = StartOnFirstEvent(ProtocolTypeRouter({"http": django_app}))

if "twisted.internet.reactor" in sys.modules:
    # Under daphne: start as soon as the reactor runs, so queued work is picked up without waiting
    # for a first request. callLater(0, ...) is needed: called directly it fails silently.
    from twisted.internet import reactor

    reactor.callWhenRunning(lambda: reactor.callLater(0, lambda: start_process(asyncio.get_event_loop())))
