"""``manage.py create_api_key NAME``: a new random key, and the config line holding only its hash."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gateway.auth import hash_key, new_api_key


class Command(BaseCommand):
    help = "Print a new API key for NAME and the line to add to [security] api_keys (or API_KEYS)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="who the key is for; it owns that client's requests")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise CommandError("NAME may use letters, digits, '_', '.' and '-' (at most 64).")
        key = new_api_key()
        self.stdout.write(f"API key for {name} (shown once; give it to the client):\n  {key}\n")
        self.stdout.write(f'Add to config.toml [security] api_keys:\n  "{name}:{hash_key(key)}"\n')
        self.stdout.write(
            f"or to the API_KEYS environment variable (comma-separated):\n  {name}:{hash_key(key)}\n"
        )
