"""``manage.py prune_queue [--dry-run]``: apply queue retention now (the worker does it every minute)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from queueing.retention import prune

LINES = (
    ("finished queue rows deleted", "deleted"),
    ("finished queue rows blanked (prompts and answers)", "blanked"),
    ("finished conversation turns that dropped their copy of the history", "trimmed"),
    ("expired cache entries purged", "cache_expired"),
    ("orphaned cache values or index rows deleted", "cache_orphans"),
)


class Command(BaseCommand):
    help = (
        "Delete finished queue rows older than [retention] finished_seconds, blank the prompts and "
        "answers of those older than payload_seconds, purge the caches' expired entries; print the counts."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = prune(dry_run=options["dry_run"])
        for label, key in LINES:
            self.stdout.write(f"{label}: {counts[key]}")
        if options["dry_run"]:
            self.stdout.write("dry run: nothing was changed")
