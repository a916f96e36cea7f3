"""The response and conversation caches: keys, sizes, TTLs, LRU eviction by bytes, hit counters.

Values live in the Django cache aliases ``responses`` and ``conversations`` (database cache on the
embedded default, Redis scaled out). Their sizes and last-use times live in ``chat.CacheEntry`` and
the hit/miss counters in ``stats.counters``, both in the shared database, so the byte limit and the
statistics hold across processes in both deployments. A failing cache backend is logged and
bypassed: callers see a miss, and a store is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.db.models import Count, Sum

from chat.models import CacheEntry
from stats import counters

logger = logging.getLogger(__name__)

RESPONSES = "responses"
CONVERSATIONS = "conversations"
# Bump when the stored format changes: old entries are then simply never read again. v2: chunks are
# generation-record chunks (content, thinking, tool calls...), not content strings.
KEY_VERSION = "v2"
LRU_RESOLUTION_SECONDS = 1.0
TOUCH_MEMO_SIZE = 10_000  # keys whose last LRU refresh this process remembers


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


# How often a process checks the byte limit after storing (between checks the cache may exceed it
# by what one process stores in a second).
EVICT_CHECK_SECONDS = 1.0


# Insert or refresh an index row in one statement (SQLite and PostgreSQL both have ON CONFLICT).
_INDEX_UPSERT = (
    f'INSERT INTO "{CacheEntry._meta.db_table}" ("alias", "key", "size_bytes", "last_used", "expires_at") '  # noqa: S608 - the model's table; values are parameters
    'VALUES (%s, %s, %s, %s, %s) ON CONFLICT ("alias", "key") DO UPDATE SET '
    '"size_bytes" = excluded."size_bytes", "last_used" = excluded."last_used", '
    '"expires_at" = excluded."expires_at"'
)


class SizedCache:
    """A Django cache alias bounded in bytes with least-recently-used eviction."""

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
    ) -> None:
        self.alias = alias
        self._max_size_mb, self._ttl_seconds = max_size_mb, ttl_seconds  # read at call time
        self.hits, self.misses, self.evictions = hits, misses, evictions
        self.sliding = sliding  # a read renews the TTL (conversations), or not (responses)
        self._evicted_at = 0.0  # when this process last checked the byte limit
        self._touched: dict[str, float] = {}  # key -> when this process last refreshed its LRU time

    @property
    def max_bytes(self) -> int:
        return int(self._max_size_mb() * 1024 * 1024)

    @property
    def ttl_seconds(self) -> int:
        return int(self._ttl_seconds())

    def get(self, key: str, *, count: bool = True) -> Any | None:
        """The stored value, or None (a miss, an expired entry or a failing backend)."""
        backend = caches[self.alias]
        try:
            raw = backend.get(key)
            if raw is not None and self.sliding:
                backend.touch(key, self.ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable, bypassed: %s", self.alias, exc)
            raw = None
        if raw is None:
            stale = CacheEntry.objects.filter(alias=self.alias, key=key)
            if stale.exists():  # a read first: a miss should not take the database's write lock
                stale.delete()
            if count:
                counters.incr(self.misses)
            return None
        now = time.time()
        fields: dict[str, Any] = {"last_used": now}
        if self.sliding:
            fields["expires_at"] = now + self.ttl_seconds
        # LRU order to the second is plenty: a key this process touched within the last second is
        # not touched again (no query at all), and one another process touched is not rewritten.
        if not 0 <= now - self._touched.get(key, -1e18) < LRU_RESOLUTION_SECONDS:
            if len(self._touched) > TOUCH_MEMO_SIZE:
                self._touched.clear()
            self._touched[key] = now
            entry = CacheEntry.objects.filter(alias=self.alias, key=key)
            if not entry.filter(last_used__gte=now - LRU_RESOLUTION_SECONDS).exists() and not entry.update(
                **fields
            ):
                self._index(key, len(raw.encode()), now)
        if count:
            counters.incr(self.hits)
        return json.loads(raw)

    def set(self, key: str, value: Any) -> bool:
        """Store ``value`` (JSON) and evict the least recently used entries beyond the limit."""
        raw = canonical_json(value)
        size = len(raw.encode())
        if size > self.max_bytes:
            logger.info("%s entry of %d bytes exceeds the whole cache; not stored", self.alias, size)
            return False
        try:
            caches[self.alias].set(key, raw, timeout=self.ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable, not stored: %s", self.alias, exc)
            return False
        now = time.time()
        self._index(key, size, now)
        # The byte total is a scan of the index: once a second per process is enough.
        if not self._evicted_at <= now < self._evicted_at + EVICT_CHECK_SECONDS:
            self._evicted_at = now
            self.evict()
        return True

    def delete(self, key: str) -> bool:
        existed = CacheEntry.objects.filter(alias=self.alias, key=key).delete()[0] > 0
        try:
            caches[self.alias].delete(key)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable, delete skipped: %s", self.alias, exc)
        return existed

    def _index(self, key: str, size: int, now: float) -> None:
        """Insert or refresh the key's index row, in one statement."""
        with connection.cursor() as cursor:
            cursor.execute(_INDEX_UPSERT, [self.alias, key, size, now, now + self.ttl_seconds])

    def evict(self) -> int:
        """Drop expired index rows, then least recently used entries until within the limit."""
        now = time.time()
        CacheEntry.objects.filter(alias=self.alias, expires_at__lt=now).delete()
        over = self.totals().size_bytes - self.max_bytes
        if over <= 0:
            return 0
        victims, freed = [], 0
        for key, size in (
            CacheEntry.objects.filter(alias=self.alias).order_by("last_used").values_list("key", "size_bytes")
        ).iterator():
            victims.append(key)
            freed += size
            if freed >= over:
                break
        CacheEntry.objects.filter(alias=self.alias, key__in=victims).delete()
        try:
            caches[self.alias].delete_many(victims)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable during eviction: %s", self.alias, exc)
        counters.incr(self.evictions, len(victims))
        return len(victims)

    def totals(self) -> CacheTotals:
        row = CacheEntry.objects.filter(alias=self.alias, expires_at__gte=time.time()).aggregate(
            n=Count("id"), size=Sum("size_bytes")
        )
        return CacheTotals(entries=row["n"] or 0, size_bytes=row["size"] or 0)

    def clear(self) -> int:
        """Remove this service's entries only (never a FLUSHDB of a shared Redis)."""
        self._touched.clear()
        keys = list(CacheEntry.objects.filter(alias=self.alias).values_list("key", flat=True))
        backend = caches[self.alias]
        try:
            if hasattr(backend, "delete_pattern"):
                backend.delete_pattern("*")  # django-redis: only keys under this alias's prefix
            else:
                backend.clear()  # a database cache: the table belongs to this alias alone
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass the cache"
            logger.warning("%s cache unavailable during clear: %s", self.alias, exc)
        CacheEntry.objects.filter(alias=self.alias).delete()
        return len(keys)


response_cache = SizedCache(
    RESPONSES,
    max_size_mb=lambda: settings.CACHE_MAX_SIZE_MB,
    ttl_seconds=lambda: settings.CACHE_TTL_SECONDS,
    hits=counters.RESPONSE_HITS,
    misses=counters.RESPONSE_MISSES,
    evictions=counters.RESPONSE_EVICTIONS,
    sliding=False,
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


def store_response(
    *, key: str, endpoint: str, model: str, chunks: list[dict[str, Any]], final: dict[str, Any]
) -> bool:
    """Cache a complete, successful generation so a hit replays it chunk for chunk."""
    if not settings.CACHE_ENABLED:
        return False
    return response_cache.set(key, {"endpoint": endpoint, "model": model, "chunks": chunks, "final": final})


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
