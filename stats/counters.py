"""Named event counters kept in the database, so every process adds to and reads the same numbers.

An increment is one ``UPDATE ... SET value = value + n`` (atomic on SQLite and PostgreSQL); the
row is created on first use. Names are constants here so a typo cannot start a new counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.db import IntegrityError, transaction
from django.db.models import F

from stats.models import Counter

REQUESTS_QUEUED = "queue.requests"  # rows created by enqueue (not cache hits)
DEDUPLICATED = "queue.deduplicated"  # jobs that shared another job's generation
BATCHES = "queue.batches"  # claims that took at least one job
BATCHED_JOBS = "queue.batched_jobs"  # jobs taken by those claims
GENERATIONS = "queue.generations"  # upstream generations completed
COMPLETED = "queue.completed"  # jobs completed by a generation
FAILED = "queue.failed"
CANCELLED = "queue.cancelled"
RESPONSE_HITS = "responses.hits"
RESPONSE_MISSES = "responses.misses"
RESPONSE_EVICTIONS = "responses.evictions"
CONVERSATION_HITS = "conversations.hits"
CONVERSATION_MISSES = "conversations.misses"
CONVERSATION_EVICTIONS = "conversations.evictions"
CHAT_REQUESTS = "chat.requests"  # generation requests answered (hits and misses)
GENERATION_MS_TOTAL = "queue.generation_ms_total"  # summed upstream generation time
UPSTREAM_ERRORS_PREFIX = "upstream_errors."

ALL = (
    REQUESTS_QUEUED, DEDUPLICATED, BATCHES, BATCHED_JOBS, GENERATIONS, COMPLETED, FAILED, CANCELLED,
    RESPONSE_HITS, RESPONSE_MISSES, RESPONSE_EVICTIONS, CONVERSATION_HITS, CONVERSATION_MISSES,
    CONVERSATION_EVICTIONS, CHAT_REQUESTS, GENERATION_MS_TOTAL,
)  # fmt: skip


def incr(name: str, amount: int = 1) -> None:
    """Add ``amount`` to counter ``name``."""
    incr_many({name: amount})


def incr_many(amounts: Mapping[str, int]) -> None:
    """Add several counters in one transaction."""
    with transaction.atomic():
        for name, amount in amounts.items():
            if not amount:
                continue
            if Counter.objects.filter(name=name).update(value=F("value") + amount):
                continue
            try:
                with transaction.atomic():
                    Counter.objects.create(name=name, value=amount)
            except IntegrityError:  # created by another process in between
                Counter.objects.filter(name=name).update(value=F("value") + amount)


def read(names: Iterable[str] | None = None) -> dict[str, int]:
    """Current values (0 for counters never incremented); all counters when ``names`` is None."""
    rows = Counter.objects.all() if names is None else Counter.objects.filter(name__in=list(names))
    values = dict(rows.values_list("name", "value"))
    if names is not None:
        return {name: values.get(name, 0) for name in names}
    return values


def reset(prefixes: Iterable[str]) -> None:
    """Zero every counter whose name starts with one of ``prefixes``."""
    for prefix in prefixes:
        Counter.objects.filter(name__startswith=prefix).update(value=0)
