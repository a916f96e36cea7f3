"""Django's database cache with a one-statement ``set``.

Django's ``DatabaseCache.set`` counts the whole table (for culling), then opens a transaction to
read the row and update or insert it: four statements and the database's write lock, for every
answer stored. Our caches are bounded by ``chat.caches.SizedCache`` (bytes, LRU) and configured
with no entry limit, so culling never applies; ``set`` here is a single upsert (``INSERT ... ON
CONFLICT DO UPDATE``, which SQLite and PostgreSQL both have). ``add``, ``touch`` and reads are
Django's own.
"""

from __future__ import annotations

import base64
import pickle
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.db import DatabaseCache
from django.db import connections, router


class UpsertDatabaseCache(DatabaseCache):
    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        key = self.make_and_validate_key(key, version=version)
        timeout = self.get_backend_timeout(timeout)
        exp = datetime.max if timeout is None else datetime.fromtimestamp(timeout, tz=UTC)
        if not settings.USE_TZ:
            exp = exp.replace(tzinfo=None)
        db = router.db_for_write(self.cache_model_class)
        connection = connections[db]
        quote = connection.ops.quote_name
        encoded = base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")
        table = quote(self._table)  # type: ignore[attr-defined]  # DatabaseCache's own, not in its stubs
        ckey, cvalue, cexp = quote("cache_key"), quote("value"), quote("expires")
        sql = (
            f"INSERT INTO {table} ({ckey}, {cvalue}, {cexp}) VALUES (%s, %s, %s) "  # noqa: S608 - identifiers from settings
            f"ON CONFLICT ({ckey}) DO UPDATE SET {cvalue} = excluded.{cvalue}, {cexp} = excluded.{cexp}"
        )
        expires = connection.ops.adapt_datetimefield_value(exp.replace(microsecond=0))
        # Unlike Django's, a failure raises: SizedCache then logs it and keeps no index row.
        with connection.cursor() as cursor:
            cursor.execute(sql, [key, encoded, expires])
