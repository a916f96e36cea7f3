"""``manage.py clear_cache [--responses] [--conversations]`` (also ``clear-cache``): empty the caches."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ops.services import clear_caches


class Command(BaseCommand):
    help = "Remove this service's cached answers and/or conversations (both when no flag is given)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--responses", action="store_true", help="clear the response cache")
        parser.add_argument("--conversations", action="store_true", help="clear the conversation cache")

    def handle(self, *args: Any, **options: Any) -> None:
        both = not (options["responses"] or options["conversations"])
        cleared = clear_caches(
            responses=both or options["responses"], conversations=both or options["conversations"]
        )
        for name, count in cleared.items():
            self.stdout.write(self.style.SUCCESS(f"cleared the {name} cache ({count} entries)"))
