"""Named event counters kept in the database, so every process adds to and reads the same numbers.

Increments are added up in memory and written every FLUSH_SECONDS by a background thread, in one
transaction of ``UPDATE ... SET value = value + n`` (atomic on SQLite and PostgreSQL; the row is
created on first use). That keeps database writes off the request path: a cache hit used to pay
two. A process reads its own pending increments first, so its figures are exact; another process's
arrive within FLUSH_SECONDS. Pending increments are written at exit too; a process killed with -9
loses them, so the figures that count queue rows (queued, completed, failed, cancelled, generations)
are ``record``ed in the transaction that changes the rows instead. Names are constants here so
a typo cannot start a new counter.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, transaction
from django.db.models import F

from stats.models import Counter

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 0.5

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
REGENERATED = "responses.regenerated"  # sampled repeats answered afresh (a Regenerate)
CONVERSATION_HITS = "conversations.hits"
CONVERSATION_MISSES = "conversations.misses"
CONVERSATION_EVICTIONS = "conversations.evictions"
CHAT_REQUESTS = "chat.requests"  # generation requests answered (hits and misses)
GENERATION_MS_TOTAL = "queue.generation_ms_total"  # summed upstream generation time
UPSTREAM_ERRORS_PREFIX = "upstream_errors."
SERVER_PREFIX = "servers."  # servers.<name>.<SERVER_FIGURES>: one Ollama server's generations
SERVER_FIGURES = ("completed", "failed", "generation_ms")


def server_counter(server: str, figure: str) -> str:
    """The counter of one Ollama server's ``figure`` (one of SERVER_FIGURES)."""
    assert figure in SERVER_FIGURES
    return f"{SERVER_PREFIX}{server}.{figure}"


ALL = (
    REQUESTS_QUEUED, DEDUPLICATED, BATCHES, BATCHED_JOBS, GENERATIONS, COMPLETED, FAILED, CANCELLED,
    RESPONSE_HITS, RESPONSE_MISSES, RESPONSE_EVICTIONS, REGENERATED, CONVERSATION_HITS, CONVERSATION_MISSES,
    CONVERSATION_EVICTIONS, CHAT_REQUESTS, GENERATION_MS_TOTAL,
)  # fmt: skip


K = TypeVar("K", bound=Hashable)


class Buffer(Generic[K]):
    """Increments not yet written (per process by nature; flushed to a shared table by ``write``
    every FLUSH_SECONDS from a background thread, and at exit). Used for the counters here and for
    the usage figures of ``stats.usage``."""

    def __init__(self, name: str, write: Callable[[Mapping[K, int]], None]) -> None:
        self.name, self.write = name, write
        self.pending: collections.Counter[K] = collections.Counter()
        self.lock = threading.Lock()
        # Held from taking the increments until they are written: the flush at exit waits for a
        # background write under way (taken increments would otherwise die with the thread).
        self.writing = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        atexit.register(self._flush_at_exit)

    def add(self, amounts: Mapping[K, int]) -> None:
        with self.lock:
            self.pending.update({k: v for k, v in amounts.items() if v})
            if not settings.COUNTERS_BACKGROUND_FLUSH:
                return
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name=f"{self.name}-flush", daemon=True)
                self.thread.start()

    def take(self) -> dict[K, int]:
        with self.lock:
            taken, self.pending = dict(self.pending), collections.Counter()
        return taken

    def flush(self) -> None:
        """Write the pending increments now (put back if the write fails)."""
        with self.writing:
            taken = self.take()
            if not taken:
                return
            try:
                self.write(taken)
            except DatabaseError:
                self.add(taken)
                raise

    def _flush_at_exit(self) -> None:
        self.flush()

    def _run(self) -> None:
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            close_old_connections()
            try:
                self.flush()
            except DatabaseError:
                logger.exception("writing %s failed; will retry", self.name)


def incr(name: str, amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (written within FLUSH_SECONDS)."""
    _buffer.add({name: amount})


def incr_many(amounts: Mapping[str, int]) -> None:
    """Add several counters."""
    _buffer.add(amounts)


def record(amounts: Mapping[str, int]) -> None:
    """Add now, in the caller's transaction: the figures that count queue rows commit (or roll
    back) with the rows, so a process killed at any moment loses neither (buffered increments die
    with it). One UPDATE each, inside a transaction the caller holds anyway."""
    _write(amounts)


def flush() -> None:
    """Write this process's pending counter increments now."""
    _buffer.flush()


def discard_pending() -> None:
    """Forget this process's unwritten increments (tests start from a clean slate)."""
    _buffer.take()


def _write(amounts: Mapping[str, int]) -> None:
    with transaction.atomic(savepoint=False):
        for name, amount in sorted(amounts.items()):  # one lock order for every writer (PostgreSQL)
            if not amount:
                continue
            if Counter.objects.filter(name=name).update(value=F("value") + amount):
                continue
            try:
                with transaction.atomic():
                    Counter.objects.create(name=name, value=amount)
            except IntegrityError:  # created by another process in between
                Counter.objects.filter(name=name).update(value=F("value") + amount)


_buffer: Buffer[str] = Buffer("counters", _write)


def read(names: Iterable[str] | None = None) -> dict[str, int]:
    """Current values (0 for counters never incremented); all counters when ``names`` is None."""
    flush()
    rows = Counter.objects.all() if names is None else Counter.objects.filter(name__in=list(names))
    values = dict(rows.values_list("name", "value"))
    if names is not None:
        return {name: values.get(name, 0) for name in names}
    return values
