from __future__ import annotations

import asyncio

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from core import runtime

        runtime.on_start(_prepare_for_requests)


def _prepare_for_requests(loop: asyncio.AbstractEventLoop) -> None:
    """Pay the first request's one-off costs at start-up instead: the Ollama clients (their TLS
    context loads the CA bundle) and the blocking pool's database connection."""
    from django.db import connections

    from core import servers

    servers.open_clients(loop)
    # The connection is looked up in the pool thread: each thread has its own.
    loop.run_in_executor(None, lambda: connections["default"].ensure_connection())
