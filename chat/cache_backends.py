"""The cache backends as ``chat.caches.SizedCache`` uses them: what a value really takes in each,
and Django's database cache with a one-statement ``set``.

**Sizes.** ``write`` stores a value and returns the bytes it takes in the backend, which is what
the byte limit counts: for the database cache, the row's ``cache_key`` and its ``value`` column
(base64 of the pickle: 4/3 of the pickle, so counting the JSON text made the totals 0.75 of the
table); for django-redis, the full Redis key and the serialised value. A row's fixed overhead (its
``expires`` column, Redis's few dozen bytes per key) is left out: under 5 % for entries of a
kilobyte or more.

**The database cache.** Django's ``DatabaseCache.set`` counts the whole table (for culling), then
opens a transaction to read the row and update or insert it: four statements and the database's
write lock, for every answer stored. Our caches are bounded by ``SizedCache`` (bytes, LRU) and
configured with no entry limit, so culling never applies; ``set`` here is a single upsert
(``INSERT ... ON CONFLICT DO UPDATE``, which SQLite and PostgreSQL both have). Django never
deletes an expired row it is not asked for again (its ``_cull`` only runs past ``MAX_ENTRIES``):
``delete_expired`` does, in bounded batches. ``add``, ``touch`` and reads are Django's own.
"""

from __future__ import annotations

import base64
import pickle
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.db import DatabaseCache
from django.db import connections, router
from django.utils import timezone


class UpsertDatabaseCache(DatabaseCache):
    def encode(self, value: Any) -> str:
        """The ``value`` column's text for ``value``, as Django's database cache writes it."""
        return base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        self.set_encoded(self.make_and_validate_key(key, version=version), self.encode(value), timeout)

    def set_encoded(self, cache_key: str, encoded: str, timeout: Any = DEFAULT_TIMEOUT) -> None:
        """Write one row: ``cache_key`` as ``make_key`` made it, ``encoded`` as ``encode`` made it."""
        timeout = self.get_backend_timeout(timeout)
        exp = datetime.max if timeout is None else datetime.fromtimestamp(timeout, tz=UTC)
        if not settings.USE_TZ:
            exp = exp.replace(tzinfo=None)
        connection = connections[self.database]
        quote = connection.ops.quote_name
        ckey, cvalue, cexp = quote("cache_key"), quote("value"), quote("expires")
        sql = (
            f"INSERT INTO {self.table} ({ckey}, {cvalue}, {cexp}) VALUES (%s, %s, %s) "  # noqa: S608 - identifiers from settings
            f"ON CONFLICT ({ckey}) DO UPDATE SET {cvalue} = excluded.{cvalue}, {cexp} = excluded.{cexp}"
        )
        expires = connection.ops.adapt_datetimefield_value(exp.replace(microsecond=0))
        # Unlike Django's, a failure raises: SizedCache then logs it and keeps no index row.
        with connection.cursor() as cursor:
            cursor.execute(sql, [cache_key, encoded, expires])

    def delete_expired(self, *, limit: int) -> int:
        """Delete up to ``limit`` rows past their expiry (through the ``expires`` index)."""
        connection = connections[self.database]
        quote = connection.ops.quote_name
        ckey, cexp = quote("cache_key"), quote("expires")
        now = connection.ops.adapt_datetimefield_value(timezone.now().replace(microsecond=0))
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE {ckey} IN "  # noqa: S608 - identifiers from settings
                f"(SELECT {ckey} FROM {self.table} WHERE {cexp} < %s LIMIT {int(limit)})",
                [now],
            )
            return max(cursor.rowcount, 0)

    @property
    def database(self) -> str:
        return router.db_for_write(self.cache_model_class)

    @property
    def table(self) -> str:
        """The table's quoted name."""
        return connections[self.database].ops.quote_name(self._table)  # type: ignore[attr-defined]  # DatabaseCache's own, not in its stubs


def _is_django_redis(backend: BaseCache) -> bool:
    return type(backend).__module__.startswith("django_redis")


def stored_size(backend: BaseCache, key: str, value: Any) -> int:
    """The bytes ``value`` takes in ``backend`` under ``key`` (key included)."""
    if isinstance(backend, UpsertDatabaseCache):
        return len(backend.make_key(key)) + len(backend.encode(value))
    if _is_django_redis(backend):
        client: Any = backend.client  # type: ignore[attr-defined]  # django-redis's, untyped
        encoded = client.encode(value)
        return len(str(client.make_key(key)).encode()) + (
            len(encoded) if isinstance(encoded, bytes) else len(str(encoded))
        )
    return len(backend.make_key(key).encode()) + len(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def write(backend: BaseCache, key: str, value: Any, *, timeout: int, max_bytes: int) -> int | None:
    """Store ``value`` unless it would take more than ``max_bytes``; the bytes it takes, or None
    when it was too large and not stored. Backend failures raise."""
    if isinstance(backend, UpsertDatabaseCache):
        cache_key = backend.make_and_validate_key(key)
        encoded = backend.encode(value)  # encoded once: sized and written
        size = len(cache_key) + len(encoded)
        if size > max_bytes:
            return None
        backend.set_encoded(cache_key, encoded, timeout)
        return size
    size = stored_size(backend, key, value)
    if size > max_bytes:
        return None
    backend.set(key, value, timeout=timeout)
    return size
