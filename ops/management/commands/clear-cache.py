"""``manage.py clear-cache``: the name the users wrote for ``clear_cache``."""

from ops.management.commands.clear_cache import Command  # noqa: F401
