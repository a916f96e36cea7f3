"""``manage.py usage [--window day] [--owner NAME] [--csv]``: usage per owner and model, as a table
or as CSV (for billing), from the shared database."""

from __future__ import annotations

import csv
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ops.services import usage_report

COLUMNS = (
    "owner",
    "model",
    "requests",
    "cache_hits",
    "prompt_tokens",
    "output_tokens",
    "tokens",
    "gpu_seconds",
)


class Command(BaseCommand):
    help = "Usage per owner and model in the current hour, day or month."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--window", choices=("hour", "day", "month"), default="day")
        parser.add_argument("--owner", default=None, help="only this owner (and its forwarded users)")
        parser.add_argument("--csv", action="store_true", help="CSV instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        report = usage_report(owner=options["owner"], window=options["window"])
        rows = [
            {"owner": entry["owner"] or "anonymous", **model}
            for entry in report["owners"]
            for model in entry["models"]
        ]
        if options["csv"]:
            writer = csv.DictWriter(
                self.stdout, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n"
            )
            writer.writeheader()
            writer.writerows(rows)
            return
        self.stdout.write(f"usage since {report['since']} ({report['window']})")
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in COLUMNS}
        self.stdout.write("  ".join(c.ljust(widths[c]) for c in COLUMNS))
        for row in rows:
            self.stdout.write("  ".join(str(row[c]).ljust(widths[c]) for c in COLUMNS))
        if not rows:
            self.stdout.write("(no usage)")
