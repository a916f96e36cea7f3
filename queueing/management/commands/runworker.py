"""``manage.py runworker chat-worker``: a queue worker process (scaled out). Overrides channels' own
``runworker`` (our app comes first in INSTALLED_APPS); the channel name is kept for compatibility."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing.worker import run_until_signalled


class Command(BaseCommand):
    help = "Run a queue worker until SIGTERM (it hands its jobs back before it exits)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channels", nargs="*", default=[settings.QUEUE_WORKER_CHANNEL])

    def handle(self, *args: Any, **options: Any) -> None:
        unknown = [c for c in options["channels"] if c != settings.QUEUE_WORKER_CHANNEL]
        if unknown:
            raise CommandError(
                f"unknown channel {unknown[0]!r}; this worker serves {settings.QUEUE_WORKER_CHANNEL!r}"
            )
        run_until_signalled()
