"""The response and conversation caches: keys, sizes, TTLs, LRU eviction by bytes, hit counters.

Values live in the Django cache aliases ``responses`` and ``conversations`` (database cache on the
embedded default, Redis scaled out). Their sizes and last-use times live in ``chat.CacheEntry``,
each alias's totals and the hit/miss counters in ``stats.models.Counter`` rows, all in the shared
database, so the byte limit and the statistics hold across processes in both deployments. A size
is what the backend really stores (``chat.cache_backends``). A failing cache backend is logged
and bypassed: callers see a miss, and a store is skipped.

Disk stays bounded: every store keeps the limit (``SizedCache``), expired entries are purged (a
batch at every store, and all of them by ``purge_expired``, which the queue's retention pass runs),
and ``reconcile`` repairs tables something else changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.db import DatabaseError, connections, router, transaction
from django.db.models import Count, Sum

from chat import cache_backends
from chat.models import CacheEntry
from stats import counters
from stats.models import Counter

logger = logging.getLogger(__name__)

RESPONSES = "responses"
CONVERSATIONS = "conversations"
# Bump when the stored format changes: old entries are then simply never read again. v2: chunks are
# generation-record chunks (content, thinking, tool calls...), not content strings.
KEY_VERSION = "v2"
LRU_RESOLUTION_SECONDS = 1.0
TOUCH_MEMO_SIZE = 10_000  # keys whose last LRU refresh this process remembers
# A stored value at least this long is decoded once per process while anyone reads it (see _Shared).
SHARE_DECODED_FROM_BYTES = 64 * 1024


class _Shared(dict[str, Any]):
    """A decoded value every reader in this process shares while any of them holds it: twenty
    readers of one large cached answer held twenty decoded copies (about 8 MB each for 100,000
    tokens). ``stamp`` identifies the stored text it came from; readers never change it."""

    __slots__ = ("__weakref__", "stamp")
    stamp: tuple[int, int]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Never part of a key: how the answer is delivered, not what it is.
NOT_IN_KEY = ("stream", "keep_alive")


def response_key(*, endpoint: str, request: dict[str, Any], owner: str = "") -> str:
    """SHA-256 of everything that changes the answer: the request Ollama gets (minus ``stream`` and
    ``keep_alive``) on its endpoint, and the owner (unless owners share the cache)."""
    if settings.SHARED_CACHE:
        owner = ""  # owners share answers (their requests and conversations stay their own)
    subject = {
        "endpoint": endpoint,
        "request": {k: v for k, v in request.items() if k not in NOT_IN_KEY},
        "owner": owner,
    }
    digest = hashlib.sha256(canonical_json(subject).encode()).hexdigest()
    return f"{KEY_VERSION}:{digest}"


@dataclass(frozen=True)
class CacheTotals:
    entries: int
    size_bytes: int


# Rows per statement when purging, evicting or sweeping: each batch is its own short transaction
# outside a store, so the database's write lock is never held for long.
BATCH = 500

_INDEX = CacheEntry._meta.db_table
# Insert or refresh an index row in one statement (SQLite and PostgreSQL both have ON CONFLICT).
_INDEX_UPSERT = (
    f'INSERT INTO "{_INDEX}" ("alias", "key", "size_bytes", "last_used", "expires_at") '  # noqa: S608 - the model's table; values are parameters
    'VALUES (%s, %s, %s, %s, %s) ON CONFLICT ("alias", "key") DO UPDATE SET '
    '"size_bytes" = excluded."size_bytes", "last_used" = excluded."last_used", '
    '"expires_at" = excluded."expires_at"'
)
# Index rows are deleted with RETURNING (SQLite 3.35+, PostgreSQL), so the totals lose exactly
# what went, whatever a sliding read changed meanwhile.
_INDEX_TAKE = f'DELETE FROM "{_INDEX}" WHERE "alias" = %s AND {{where}} RETURNING "key", "size_bytes"'  # noqa: S608 - the model's table
_INDEX_ROW = f'SELECT "size_bytes", "last_used" FROM "{_INDEX}" WHERE "alias" = %s AND "key" = %s'  # noqa: S608 - the model's table
_INDEX_TOUCH = f'UPDATE "{_INDEX}" SET "last_used" = %s{{expiry}} WHERE "alias" = %s AND "key" = %s'  # noqa: S608 - the model's table; values are parameters
# The alias's two totals rows (bytes, entries), hand-written: a store runs these at every answer,
# and the ORM compiled each again every time (a quarter of a store's time in a py-spy profile).
_COUNTERS = Counter._meta.db_table
_TOTALS_HOLD = f'SELECT "name" FROM "{_COUNTERS}" WHERE "name" IN (%s, %s) ORDER BY "name"'  # noqa: S608 - the model's table
_TOTALS_READ = f'SELECT "value" FROM "{_COUNTERS}" WHERE "name" = %s'  # noqa: S608 - the model's table
_TOTALS_CHANGE = (
    f'UPDATE "{_COUNTERS}" SET "value" = {{base}}CASE WHEN "name" = %s THEN %s ELSE %s END '  # noqa: S608 - the model's table; values are parameters
    'WHERE "name" IN (%s, %s)'
)


class SizedCache:
    """A Django cache alias bounded in bytes with least-recently-used eviction.

    The bound holds at every store. The alias's totals (bytes and entries) are two rows of the
    shared counter table, changed in the same transaction as the index rows; every change to the
    index first locks them (a row lock on PostgreSQL; on SQLite the transaction's write lock), so
    a store's check of the limit sees every other store, and two processes never evict for the
    same bytes. The store itself evicts the least recently used entries until the total is within
    ``max_bytes`` again (the entry just stored is never among them), and purges a batch of expired
    entries. Values are written and deleted while the lock is held, so at any moment at most one
    store's entry is beyond the limit (the limit plus one entry, across every process). On the
    database cache (the embedded default) they are part of the same transaction, so a value and
    its index row come and go together; on Redis a failed delete is logged and left to Redis's own
    expiry (every key carries the TTL).
    """

    def __init__(
        self,
        alias: str,
        *,
        max_size_mb: Callable[[], float],
        ttl_seconds: Callable[[], int],
        hits: str,
        misses: str,
        evictions: str,
        sliding: bool,
        share_decoded: bool = False,
    ) -> None:
        self.alias = alias
        self._max_size_mb, self._ttl_seconds = max_size_mb, ttl_seconds  # read at call time
        self.hits, self.misses, self.evictions = hits, misses, evictions
        self.sliding = sliding  # a read renews the TTL (conversations), or not (responses)
        # Counter rows holding the totals (not in stats.counters.ALL: they are levels, not events).
        self.bytes_counter, self.entries_counter = f"{alias}.stored_bytes", f"{alias}.stored_entries"
        self._touched: dict[str, float] = {}  # key -> when this process last refreshed its LRU time
        # Values read-only to their readers (responses; a conversation is changed and stored back).
        self._shared: weakref.WeakValueDictionary[str, _Shared] | None = (
            weakref.WeakValueDictionary() if share_decoded else None
        )

    @property
    def max_bytes(self) -> int:
        return int(self._max_size_mb() * 1024 * 1024)

    @property
    def ttl_seconds(self) -> int:
        return int(self._ttl_seconds())

    # --- reads and writes --------------------------------------------------------------------

    def get(self, key: str, *, count: bool = True) -> Any | None:
        """The stored value, or None (a miss, an expired entry or a failing backend)."""
        backend = caches[self.alias]
        answered = True
        try:
            raw = backend.get(key)
            if raw is not None and self.sliding:
                backend.touch(key, self.ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable, bypassed: %s", self.alias, exc)
            raw, answered = None, False
        if raw is None:
            # The backend lost the value (expired, or evicted by Redis itself): drop its index row.
            # A read first: a miss should not take the database's write lock.
            if answered and self._index_row(key) is not None:
                with self._locked() as cursor:
                    self._take(cursor, '"key" = %s', [key])
            if count:
                counters.incr(self.misses)
            return None
        now = time.time()
        # LRU order to the second is plenty: a key this process touched within the last second is
        # not touched again (no query at all), and one another process touched is not rewritten.
        if not 0 <= now - self._touched.get(key, -1e18) < LRU_RESOLUTION_SECONDS:
            if len(self._touched) > TOUCH_MEMO_SIZE:
                self._touched.clear()
            self._touched[key] = now
            row = self._index_row(key)
            if row is None or (row[1] < now - LRU_RESOLUTION_SECONDS and not self._touch(key, now)):
                self._reindex(backend, key, raw, now)
        if count:
            counters.incr(self.hits)
        return self._decoded(key, raw)

    def _index_row(self, key: str, cursor: Any = None) -> tuple[int, float] | None:
        """The key's index row, its size and when it was last used; None without one. A read:
        on ``cursor`` inside a ``_locked`` transaction, else on a cursor of its own."""
        if cursor is None:
            with connections[router.db_for_read(CacheEntry)].cursor() as own:
                return self._index_row(key, own)
        cursor.execute(_INDEX_ROW, [self.alias, key])
        row = cursor.fetchone()
        return (int(row[0]), float(row[1])) if row is not None else None

    def _touch(self, key: str, now: float) -> bool:
        """Mark the key used now (its expiry moved too when sliding); False without an index row."""
        expiry, params = (
            (', "expires_at" = %s', [now, now + self.ttl_seconds]) if self.sliding else ("", [now])
        )
        with connections[router.db_for_write(CacheEntry)].cursor() as cursor:
            cursor.execute(_INDEX_TOUCH.format(expiry=expiry), [*params, self.alias, key])
            return bool(cursor.rowcount)

    def _decoded(self, key: str, raw: str) -> Any:
        """``raw`` decoded; a large value already decoded from the same text and still held by a
        reader in this process is that same object."""
        if self._shared is None or len(raw) < SHARE_DECODED_FROM_BYTES:
            return json.loads(raw)
        stamp = (len(raw), hash(raw))
        held = self._shared.get(key)
        if held is not None and held.stamp == stamp:
            return held
        value = json.loads(raw)
        if not isinstance(value, dict):
            return value
        shared = _Shared(value)
        shared.stamp = stamp
        self._shared[key] = shared
        return shared

    def set(self, key: str, value: Any) -> bool:
        """Store ``value`` (JSON), evicting the least recently used entries beyond the limit."""
        raw = canonical_json(value)
        backend = caches[self.alias]
        ttl, limit = self.ttl_seconds, self.max_bytes
        try:
            with self._locked() as cursor:
                try:
                    size = cache_backends.write(backend, key, raw, timeout=ttl, max_bytes=limit)
                except DatabaseError:
                    raise  # this database: the transaction is spoilt, leave it (caught below)
                except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
                    logger.warning("%s cache unavailable, not stored: %s", self.alias, exc)
                    return False
                if size is not None:
                    self._record(cursor, backend, key, size, time.time())
        except DatabaseError as exc:  # the index's database, or the backend if it is that database
            logger.warning("%s cache unavailable, not stored: %s", self.alias, exc)
            return False
        if size is None:
            logger.info(
                "%s entry of %s exceeds the whole cache (%d bytes); not stored", self.alias, key, limit
            )
            return False
        return True

    def delete(self, key: str) -> bool:
        backend = caches[self.alias]
        with self._locked() as cursor:
            existed = bool(self._take(cursor, '"key" = %s', [key]))
            self._delete_values(backend, [key])
        return existed

    def clear(self) -> int:
        """Remove this service's entries only (never a FLUSHDB of a shared Redis)."""
        self._touched.clear()
        backend = caches[self.alias]
        together = self._together(backend)
        with self._locked() as cursor:
            entries = CacheEntry.objects.filter(alias=self.alias)
            removed = entries.count()
            entries.delete()
            self._set_totals(cursor, 0, 0)
            if together:
                backend.clear()  # a database cache: the table belongs to this alias alone
            else:
                try:
                    if hasattr(backend, "delete_pattern"):
                        backend.delete_pattern("*")  # django-redis: only keys under this alias's prefix
                    else:
                        backend.clear()
                except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
                    logger.warning("%s cache unavailable during clear: %s", self.alias, exc)
        return removed

    def totals(self) -> CacheTotals:
        """Entries and bytes stored now (two counter rows; the index itself if they are missing).
        Expired entries count until they are purged (at the next store, or by ``purge_expired``)."""
        values = dict(
            Counter.objects.filter(name__in=(self.bytes_counter, self.entries_counter)).values_list(
                "name", "value"
            )
        )
        if len(values) < 2:
            entries, size = self._index_totals()
            return CacheTotals(entries=entries, size_bytes=size)
        return CacheTotals(entries=values[self.entries_counter], size_bytes=values[self.bytes_counter])

    # --- maintenance ---------------------------------------------------------------------------

    def evict(self) -> int:
        """Purge a batch of expired entries, then evict least recently used ones until within the
        limit; returns how many were evicted (a store does this itself)."""
        backend = caches[self.alias]
        with self._locked() as cursor:
            self._purge(cursor, backend, time.time())
            return len(self._evict_over(cursor, backend, keep=None))

    def purge_expired(self) -> int:
        """Delete every expired entry, value and index row, in batches; returns how many went.
        On the database cache this also deletes expired value rows that have no index row (left by
        versions before this one, whose eviction kept them)."""
        backend = caches[self.alias]
        removed = 0
        while True:
            with self._locked() as cursor:
                purged = self._purge(cursor, backend, time.time())
            removed += len(purged)
            if len(purged) < BATCH:
                break
        if self._together(backend):
            while True:
                with self._locked():
                    deleted = backend.delete_expired(limit=BATCH)
                removed += deleted
                if deleted < BATCH:
                    break
        return removed

    def reconcile(self) -> dict[str, int]:
        """Make the index, the values and the totals agree again, in batches: on the database cache,
        delete value rows that have no index row and index rows that have no value; then recount
        the totals from the index. The store keeps them in step by itself; this repairs what
        something else did to the tables (a crash of an older version, a row deleted by hand)."""
        backend = caches[self.alias]
        orphan_values = orphan_entries = 0
        if self._together(backend):
            prefix = backend.make_key("")
            if backend.make_key("k") == f"{prefix}k":  # Django's key function: prefix, version, key
                orphan_values, orphan_entries = self._sweep(backend, prefix)
        with self._locked() as cursor:
            before = self.totals()
            entries, size = self._index_totals()
            self._set_totals(cursor, size, entries)
        return {
            "orphan_values": orphan_values,
            "orphan_entries": orphan_entries,
            "drift_bytes": before.size_bytes - size,
            "drift_entries": before.entries - entries,
        }

    # --- inside the lock -----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        """A transaction holding this alias's totals rows (created from the index when missing)."""
        using = router.db_for_write(CacheEntry)
        names = (self.bytes_counter, self.entries_counter)
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            # Locked in name order, so two processes never wait for each other's second row.
            hold = _TOTALS_HOLD + (" FOR UPDATE" if connections[using].features.has_select_for_update else "")

            def held() -> int:
                cursor.execute(hold, names)
                return len(cursor.fetchall())

            if held() < 2:
                # Only the first insert counts (another process's, if it won): no other change to
                # the index can happen before it, since every change needs these rows.
                entries, size = self._index_totals()
                Counter.objects.bulk_create(
                    [
                        Counter(name=self.bytes_counter, value=size),
                        Counter(name=self.entries_counter, value=entries),
                    ],
                    ignore_conflicts=True,
                )
                held()
            yield cursor

    def _record(self, cursor: Any, backend: BaseCache, key: str, size: int, now: float) -> None:
        """Index a stored value, then purge a batch of expired entries and evict beyond the limit."""
        old = self._index_row(key, cursor)
        cursor.execute(_INDEX_UPSERT, [self.alias, key, size, now, now + self.ttl_seconds])
        self._add_totals(cursor, size - (old[0] if old else 0), 0 if old else 1)
        self._purge(cursor, backend, now)
        self._evict_over(cursor, backend, keep=key)

    def _reindex(self, backend: BaseCache, key: str, raw: str, now: float) -> None:
        """Index a value found without an index row (stored by a process that died before indexing
        it), if it is still there, and keep the limit."""
        try:
            size = cache_backends.stored_size(backend, key, raw)
            with self._locked() as cursor:
                if backend.has_key(key):
                    self._record(cursor, backend, key, size, now)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable, entry not indexed: %s", self.alias, exc)

    def _purge(self, cursor: Any, backend: BaseCache, now: float) -> list[str]:
        """Delete a batch of expired entries, values and index rows."""
        where = (
            f'"id" IN (SELECT "id" FROM "{_INDEX}" WHERE "alias" = %s AND "expires_at" < %s LIMIT {BATCH})'  # noqa: S608 - the model's table
        )
        purged = self._take(cursor, where, [self.alias, now])
        self._delete_values(backend, purged)
        if self._together(backend):
            backend.delete_expired(limit=BATCH)  # value rows past expiry that have no index row
        return purged

    def _evict_over(self, cursor: Any, backend: BaseCache, *, keep: str | None) -> list[str]:
        """Evict least recently used entries (never ``keep``) until the total is within the limit."""
        over = self._locked_bytes(cursor) - self.max_bytes
        if over <= 0:
            return []
        victims, freed = [], 0
        candidates = CacheEntry.objects.filter(alias=self.alias).order_by("last_used")
        if keep is not None:
            candidates = candidates.exclude(key=keep)
        for victim, size in candidates.values_list("key", "size_bytes").iterator(chunk_size=64):
            victims.append(victim)
            freed += size
            if freed >= over:
                break
        evicted: list[str] = []
        for start in range(0, len(victims), BATCH):
            batch = victims[start : start + BATCH]
            placeholders = ", ".join(["%s"] * len(batch))
            evicted += self._take(cursor, f'"key" IN ({placeholders})', batch)
        self._delete_values(backend, evicted)
        if evicted:
            counters.incr(self.evictions, len(evicted))
        return evicted

    def _take(self, cursor: Any, where: str, params: list[Any]) -> list[str]:
        """Delete index rows of this alias and take their bytes off the totals; their keys."""
        cursor.execute(_INDEX_TAKE.format(where=where), [self.alias, *params])
        rows = cursor.fetchall()
        if rows:
            self._add_totals(cursor, -sum(size for _, size in rows), -len(rows))
        return [key for key, _ in rows]

    def _sweep(self, backend: cache_backends.UpsertDatabaseCache, prefix: str) -> tuple[int, int]:
        """Delete value rows without an index row and index rows without a value, a batch at a time."""
        table, start = backend.table, len(prefix) + 1
        page = f'SELECT "cache_key" FROM {table} WHERE "cache_key" > %s ORDER BY "cache_key" LIMIT {BATCH}'  # noqa: S608 - identifiers from settings
        # The value's key is the prefix plus the index's key: the unique (alias, key) index serves it.
        unindexed = (
            f'DELETE FROM {table} WHERE "cache_key" > %s AND "cache_key" <= %s AND NOT EXISTS (SELECT 1 '  # noqa: S608 - identifiers from settings
            f'FROM "{_INDEX}" e WHERE e."alias" = %s AND e."key" = SUBSTR({table}."cache_key", {start}))'
        )
        valueless = (
            f'"id" > %s AND "id" <= %s AND NOT EXISTS (SELECT 1 FROM {table} c '  # noqa: S608 - identifiers from settings
            f'WHERE c."cache_key" = %s || "{_INDEX}"."key")'
        )
        values = entries = 0
        last = ""
        while True:
            with self._locked() as cursor:
                cursor.execute(page, [last])
                keys = [row[0] for row in cursor.fetchall()]
                if not keys:
                    break
                cursor.execute(unindexed, [last, keys[-1], self.alias])
                values += max(cursor.rowcount, 0)
                last = keys[-1]
        last_id = 0
        while True:
            with self._locked() as cursor:
                ids = list(
                    CacheEntry.objects.filter(alias=self.alias, id__gt=last_id)
                    .order_by("id")
                    .values_list("id", flat=True)[:BATCH]
                )
                if not ids:
                    break
                entries += len(self._take(cursor, valueless, [last_id, ids[-1], prefix]))
                last_id = ids[-1]
        return values, entries

    def _together(self, backend: BaseCache) -> TypeGuard[cache_backends.UpsertDatabaseCache]:
        """Whether the values live in the index's database (one transaction covers both)."""
        return isinstance(
            backend, cache_backends.UpsertDatabaseCache
        ) and backend.database == router.db_for_write(CacheEntry)

    def _delete_values(self, backend: BaseCache, keys: list[str]) -> None:
        """Delete values (inside the lock). On the database cache a failure undoes the whole
        transaction; elsewhere it is logged and leaves them to the backend's own expiry (Redis
        keys carry the TTL)."""
        for start in range(0, len(keys), BATCH):
            if self._together(backend):
                backend.delete_many(keys[start : start + BATCH])
                continue
            try:
                backend.delete_many(keys[start : start + BATCH])
            except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
                logger.warning("%s cache unavailable, %d values not deleted: %s", self.alias, len(keys), exc)
                return

    def _index_totals(self) -> tuple[int, int]:
        row = CacheEntry.objects.filter(alias=self.alias).aggregate(n=Count("id"), size=Sum("size_bytes"))
        return row["n"] or 0, row["size"] or 0

    # The totals rows, on the cursor of the ``_locked`` transaction that holds them.

    def _locked_bytes(self, cursor: Any) -> int:
        cursor.execute(_TOTALS_READ, [self.bytes_counter])
        return int(cursor.fetchone()[0])

    def _add_totals(self, cursor: Any, size: int, entries: int) -> None:
        self._update_totals(cursor, size, entries, add=True)

    def _set_totals(self, cursor: Any, size: int, entries: int) -> None:
        self._update_totals(cursor, size, entries, add=False)

    def _update_totals(self, cursor: Any, size: int, entries: int, *, add: bool) -> None:
        """Both totals rows in one statement: ``size`` to the bytes, ``entries`` to the entries."""
        sql = _TOTALS_CHANGE.format(base='"value" + ' if add else "")
        cursor.execute(sql, [self.bytes_counter, size, entries, self.bytes_counter, self.entries_counter])


response_cache = SizedCache(
    RESPONSES,
    max_size_mb=lambda: settings.CACHE_MAX_SIZE_MB,
    ttl_seconds=lambda: settings.CACHE_TTL_SECONDS,
    hits=counters.RESPONSE_HITS,
    misses=counters.RESPONSE_MISSES,
    evictions=counters.RESPONSE_EVICTIONS,
    sliding=False,
    share_decoded=True,
)
conversation_cache = SizedCache(
    CONVERSATIONS,
    max_size_mb=lambda: settings.CONVERSATION_CACHE_MAX_SIZE_MB,
    ttl_seconds=lambda: settings.CONVERSATION_CACHE_TTL_SECONDS,
    hits=counters.CONVERSATION_HITS,
    misses=counters.CONVERSATION_MISSES,
    evictions=counters.CONVERSATION_EVICTIONS,
    sliding=True,
)

# A process reconciles the caches at its first maintenance pass and then this often: the stores
# keep index, values and totals in step themselves, so this only repairs what something else did.
RECONCILE_SECONDS = 3600.0
_reconciled_at: float | None = None


def maintain(*, reconcile: bool | None = None) -> dict[str, int]:
    """Purge both caches' expired entries; reconcile them too at this process's first call and
    hourly after (``reconcile`` forces or skips it). Returns how many entries were purged and how
    many orphaned values or index rows were deleted (blocking)."""
    global _reconciled_at
    now = time.time()
    if reconcile is None:
        reconcile = _reconciled_at is None or now - _reconciled_at >= RECONCILE_SECONDS
    out = {"cache_expired": 0, "cache_orphans": 0}
    for cache in (response_cache, conversation_cache):
        out["cache_expired"] += cache.purge_expired()
        if reconcile:
            repaired = cache.reconcile()
            out["cache_orphans"] += repaired["orphan_values"] + repaired["orphan_entries"]
    if reconcile:
        _reconciled_at = now
    return out


def expired_entries() -> int:
    """Entries of both caches past their expiry and not purged yet."""
    return int(
        CacheEntry.objects.filter(alias__in=(RESPONSES, CONVERSATIONS), expires_at__lt=time.time()).count()
    )


def store_response(
    *, key: str, endpoint: str, model: str, chunks: list[dict[str, Any]], final: dict[str, Any]
) -> bool:
    """Cache a complete, successful generation so a hit replays it chunk for chunk.

    A chunk of content alone (most of an answer) is stored as its bare string: decoded, a string
    is about a third of the memory of a one-key dict holding it (a 100,000-token answer: about
    30 MB of Python objects per reader before), and every reader of a hit holds its decoded entry.
    ``entry_chunks`` gives the chunks back as they were."""
    if not settings.CACHE_ENABLED:
        return False
    packed = [c["content"] if len(c) == 1 and isinstance(c.get("content"), str) else c for c in chunks]
    return response_cache.set(key, {"endpoint": endpoint, "model": model, "chunks": packed, "final": final})


def entry_chunks(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A cached entry's chunks, one at a time, as the generation sent them."""
    for item in entry["chunks"]:
        yield {"content": item} if isinstance(item, str) else item


# --- "give me another answer" ---------------------------------------------------------------------
# A chat front-end's Regenerate re-sends the identical request. When a request samples (no seed, a
# temperature that is not 0) and the same owner was served that answer within
# [cache] regenerate_within_seconds, it asks for a new sample: it is generated afresh and its answer
# replaces the stored one. Deterministic requests, other owners' requests (with a shared cache) and
# identical requests in flight together are not affected. The marks live in the `default` cache
# (this process's memory on the embedded default, which has one process; Redis scaled out, so every
# process sees them).


def _served_mark(owner: str, key: str) -> str:
    return f"served:{owner}:{key}"


def wants_new_sample(*, owner: str, key: str) -> bool:
    """Whether a sampling request repeats one this owner was served within the window; marks it
    served either way (one round trip to the cache)."""
    window = settings.CACHE_REGENERATE_WITHIN_SECONDS
    if not window:
        return False
    cache = caches["default"]
    try:
        repeated = not cache.add(_served_mark(owner, key), 1, timeout=window)
        if repeated:
            cache.touch(_served_mark(owner, key), timeout=window)
    except Exception as exc:  # noqa: BLE001 - a failing cache means "no rule", never an error
        logger.warning("regenerate rule skipped, cache unavailable: %s", exc)
        return False
    return repeated
