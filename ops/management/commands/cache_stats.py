"""``manage.py cache_stats``: the same JSON as ``GET /api/cache-stats``."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand

from ops.services import collect_stats


class Command(BaseCommand):
    help = "Print the statistics GET /api/cache-stats returns, as JSON."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-ollama", action="store_true", help="do not ask Ollama for its status")

    def handle(self, *args: Any, **options: Any) -> None:
        stats = async_to_sync(collect_stats)(include_ollama=not options["no_ollama"])
        self.stdout.write(json.dumps(stats, indent=2))
