"""``manage.py warm_model [--model M] [--keep-alive 30m]``: load a model into Ollama's memory."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from core.errors import ApiError
from ops.services import warm_model


class Command(BaseCommand):
    help = "Load a model Ollama already has into memory (default: [ollama] model and keep_alive)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", help="model name as Ollama lists it (default: [ollama] model)")
        parser.add_argument("--keep-alive", help='how long to keep it loaded, e.g. "30m" or -1 for ever')

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = async_to_sync(warm_model)(model=options["model"], keep_alive=options["keep_alive"])
        except ApiError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        self.stdout.write(json.dumps(result))
        if not result["loaded"]:
            raise CommandError(f"Ollama answered but does not list {result['model']} as loaded")
        self.stdout.write(
            self.style.SUCCESS(f"{result['model']} is loaded (keep_alive {result['keep_alive']})")
        )
