"""System checks for deployment combinations that would silently misbehave."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register


@register("deployment")
def check_worker_reachable(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when the queue worker is meant to run in other processes but cannot hear them."""
    problems = []
    # Without REDIS_URL the channel layer is in-memory: only this process hears it.
    if not settings.REDIS_URL and not settings.QUEUE_EMBEDDED_WORKER:
        problems.append(
            Warning(
                "The queue worker is off in this process and the channel layer is in-memory.",
                hint="`manage.py runworker` processes never see in-memory channel messages: set "
                "REDIS_URL for separate workers, or QUEUE_EMBEDDED_WORKER=true.",
                id="chatbot.W001",
            )
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if settings.REDIS_URL and "sqlite" in engine:
        problems.append(
            Warning(
                "REDIS_URL is set but the database is SQLite.",
                hint="The queue table lives in the database: processes on other machines cannot "
                "reach a SQLite file. Set DATABASE_URL to PostgreSQL to scale out across machines.",
                id="chatbot.W002",
            )
        )
    return problems


@register("security", deploy=False)
def check_open_without_keys(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when the service listens beyond this machine with no API keys and debug off."""
    loopback = settings.HOST in ("127.0.0.1", "::1", "localhost")
    if loopback or settings.API_KEYS or settings.DEBUG:
        return []
    return [
        Warning(
            f"The server binds {settings.HOST} with no API keys: anyone who can reach it can use it.",
            hint="Create keys with `manage.py create_api_key NAME` and set [security] api_keys (API_KEYS), "
            "or bind HOST=127.0.0.1 behind a proxy that authenticates.",
            id="chatbot.W003",
        )
    ]
