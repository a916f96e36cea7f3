"""``manage.py warm_model [--model M] [--keep-alive 30m] [--all]``: load a model into Ollama's memory."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from core import servers
from core.errors import ApiError
from ops.services import warm_model


class Command(BaseCommand):
    help = "Load a model Ollama already has into memory (default: [ollama] model and keep_alive)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", help="model name as Ollama lists it (default: [ollama] model)")
        parser.add_argument("--keep-alive", help='how long to keep it loaded, e.g. "30m" or -1 for ever')
        parser.add_argument(
            "--all",
            action="store_true",
            help="every Ollama server that has it (default: the best one for it)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = async_to_sync(warm_model)(
                model=options["model"], keep_alive=options["keep_alive"], all_servers=options["all"]
            )
        except ApiError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        self.stdout.write(json.dumps(result))
        if not result["loaded"]:
            missing = [w["server"] for w in result["servers"] if not w["loaded"]]
            raise CommandError(
                f"Ollama answered but does not list {result['model']} as loaded on {', '.join(missing)}"
            )
        where = (
            ""
            if len(servers.configured()) == 1
            else " on " + ", ".join(w["server"] for w in result["servers"])
        )
        self.stdout.write(
            self.style.SUCCESS(f"{result['model']} is loaded{where} (keep_alive {result['keep_alive']})")
        )
