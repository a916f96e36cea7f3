"""The queue's state transitions: enqueue, claim, renew, finish, fail, expire, release, cancel, position.

Each transition is one short transaction under the queue lock (PostgreSQL: a transaction-level
advisory lock; SQLite: ``BEGIN IMMEDIATE`` already serialises writers), so "at most max_concurrent
generations", "exactly max_queue_size accepted" and "a result is written once, by the lease holder"
hold across every process. These functions are blocking; async callers use ``run_blocking``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from chat.errors import ApiError, Conflict, NotFound, TooManyRequests
from queueing.models import ACTIVE, TERMINAL, Job, Kind, Status
from stats import counters

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process of the deployment.
_QUEUE_LOCK_KEY = 0x63686174  # "chat"
# Used for the wait estimate until some generations have been measured.
DEFAULT_GENERATION_MS = 10_000
RECENT_GENERATIONS = 20


@contextlib.contextmanager
def queue_lock() -> Iterator[None]:
    """A transaction that no other queue transition runs alongside."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_QUEUE_LOCK_KEY])
        yield


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


def _caller_alive_since() -> Any:
    return timezone.now() - timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


# --- enqueue -------------------------------------------------------------------------------------


@dataclass
class Enqueued:
    job: Job
    created: bool  # False when an Idempotency-Key matched an earlier request
    joined: bool = False  # attached to an identical generation already running


def enqueue_request(
    *,
    kind: str,
    endpoint: str,
    model: str,
    payload: dict[str, Any],
    cache_key: str,
    priority: int = 0,
    owner: str = "",
    use_cache: bool = True,
    idempotency_key: str | None = None,
) -> Enqueued:
    """Store a request as pending (or join an identical running generation); 429 when full."""
    now = timezone.now()
    with queue_lock():
        if idempotency_key:
            existing = find_by_idempotency_key(owner=owner, key=idempotency_key)
            if existing is not None:
                return Enqueued(existing, created=False)
        job = _new_job(
            kind=kind, endpoint=endpoint, model=model, payload=payload, cache_key=cache_key,
            priority=priority, owner=owner, idempotency_key=idempotency_key,
            use_cache=use_cache, caller_seen_at=now if kind == Kind.INTERACTIVE else None,
        )  # fmt: skip
        running = _running_generation(cache_key) if settings.BATCH_DEDUPLICATION else None
        if running is not None:
            # The identical generation is under way: share it (its listeners replay from the start).
            job.status = Status.PROCESSING
            job.generation_id = running.generation_id
            job.lease_owner = running.lease_owner
            job.lease_expires_at = running.lease_expires_at
            job.started_at = now
            job.attempts = 1
            job.deduplicated = True
        elif Job.objects.filter(status=Status.PENDING).count() >= settings.QUEUE_MAX_SIZE:
            raise TooManyRequests(
                f"The queue is full ({settings.QUEUE_MAX_SIZE} pending requests); try again shortly.",
                code="queue_full",
                retry_after=max(1, math.ceil(average_generation_ms() / 1000)),
            )
        try:
            job.save(force_insert=True)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won (only possible without the lock).
            return Enqueued(Job.objects.get(owner=owner, idempotency_key=idempotency_key), created=False)
    counters.incr(counters.REQUESTS_QUEUED)
    if running is not None:
        counters.incr(counters.DEDUPLICATED)
    return Enqueued(job, created=True, joined=running is not None)


def _running_generation(cache_key: str) -> Job | None:
    return (
        Job.objects.filter(cache_key=cache_key, status=Status.PROCESSING, generation_id__isnull=False)
        .only("generation_id", "lease_owner", "lease_expires_at")
        .order_by("started_at")
        .first()
    )


def complete_from_cache(
    *,
    kind: str,
    endpoint: str,
    model: str,
    payload: dict[str, Any],
    cache_key: str,
    owner: str,
    priority: int,
    entry: dict[str, Any],
    idempotency_key: str | None = None,
) -> Job:
    """Record a request answered from the response cache as a completed row (for /api/chat-queue)."""
    now = timezone.now()
    final = entry.get("final") or {}
    job = _new_job(
        kind=kind, endpoint=endpoint, model=model, payload=payload, cache_key=cache_key,
        priority=priority, owner=owner, idempotency_key=idempotency_key,
        status=Status.COMPLETED, started_at=now, finished_at=now, cached=True,
        result_chunks=entry["chunks"], result_content="".join(entry["chunks"]), result_final=final,
        done_reason=str(final.get("done_reason", "stop")),
    )  # fmt: skip
    job.save(force_insert=True)
    return job


def _new_job(
    *,
    kind: str,
    endpoint: str,
    model: str,
    payload: dict[str, Any],
    cache_key: str,
    priority: int,
    owner: str,
    idempotency_key: str | None,
    **fields: Any,
) -> Job:
    """An unsaved row; its rank puts it after earlier requests of its priority (with ageing)."""
    return Job(
        kind=kind, endpoint=endpoint, model=model, payload=payload, cache_key=cache_key, priority=priority,
        rank=time.time() - priority * settings.QUEUE_PRIORITY_AGING_SECONDS,
        owner=owner, idempotency_key=idempotency_key or None, **fields,
    )  # fmt: skip


# --- the worker's side ---------------------------------------------------------------------------


@dataclass
class Generation:
    """One upstream call and the jobs that share it."""

    generation_id: uuid.UUID
    endpoint: str
    payload: dict[str, Any]
    cache_key: str
    job_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass
class Claim:
    generations: list[Generation]
    deferred: bool = False  # a fuller batch is worth waiting for (batch_timeout_ms)
    # Every job taken, joins included: (job, its generation, the worker running that generation).
    assigned: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    more: bool = False  # another claim now could take more (a full batch taken, slots left)

    @property
    def jobs(self) -> int:
        return len(self.assigned)


def running_generations() -> int:
    """Generations in flight across the deployment."""
    return (
        Job.objects.filter(status=Status.PROCESSING, generation_id__isnull=False)
        .values("generation_id")
        .distinct()
        .count()
    )


def claim_batch(*, worker: str, allow_partial: bool = True) -> Claim:
    """Claim the next batch of pending jobs for ``worker``, within the free generation slots.

    Takes up to ``max_batch_size`` pending jobs in rank order, starting at most as many new
    generations as slots are free. With deduplication, every pending job identical to one taken
    (or to a generation already running) shares that generation instead of taking a slot. When
    ``allow_partial`` is false, other generations are running and fewer than ``max_batch_size``
    jobs are pending, nothing is claimed and ``deferred`` is set: the caller waits up to
    ``batch_timeout_ms`` for a fuller batch. It never waits while Ollama is idle.
    """
    now = timezone.now()
    dedup = settings.BATCH_DEDUPLICATION
    with queue_lock():
        running = running_generations()
        free = settings.QUEUE_MAX_CONCURRENT - running
        if free <= 0:
            return Claim([])
        batch_size = settings.BATCH_MAX_SIZE
        candidates = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status=Status.PENDING)
            .only("id", "endpoint", "payload", "cache_key")
            .order_by("rank")[:batch_size]
        )
        if not candidates:
            return Claim([])
        if not allow_partial and running > 0 and len(candidates) < batch_size:
            return Claim([], deferred=True)

        running_by_key: dict[str, Job] = {}
        if dedup and running:
            keys = {job.cache_key for job in candidates}
            running_rows = Job.objects.filter(status=Status.PROCESSING, cache_key__in=keys).exclude(
                generation_id=None
            )
            for job in running_rows.only("cache_key", "generation_id", "lease_owner", "lease_expires_at"):
                running_by_key.setdefault(job.cache_key, job)

        fresh: dict[str, Generation] = {}  # new generations by cache key (or job id without dedup)
        joins: dict[uuid.UUID, list[uuid.UUID]] = {}  # running generation -> jobs joining it
        for job in candidates:
            key = job.cache_key if dedup else str(job.id)
            if dedup and job.cache_key in running_by_key:
                joins.setdefault(running_by_key[job.cache_key].generation_id, []).append(job.id)
            elif key in fresh:
                fresh[key].job_ids.append(job.id)
            elif len(fresh) < free:
                fresh[key] = Generation(uuid.uuid4(), job.endpoint, job.payload, job.cache_key, [job.id])
        if dedup and fresh and len(candidates) == batch_size:
            # Identical pending jobs beyond the batch share the generation too: they cost nothing.
            # (With fewer candidates than the batch size, every pending job was already a candidate.)
            extra = (
                Job.objects.select_for_update(skip_locked=True)
                .filter(status=Status.PENDING, cache_key__in=list(fresh))
                .exclude(id__in=[i for g in fresh.values() for i in g.job_ids])
            )
            for job_id, key in extra.order_by("rank").values_list("id", "cache_key"):
                fresh[key].job_ids.append(job_id)

        leaders = {job.generation_id: job for job in running_by_key.values()}
        lease = _lease_until()
        for generation in fresh.values():
            _start(generation.job_ids, generation.generation_id, worker, lease, now, first=True)
        for generation_id, job_ids in joins.items():
            leader = leaders[generation_id]
            _start(job_ids, generation_id, leader.lease_owner, leader.lease_expires_at, now, first=False)
    assigned = [(i, g.generation_id, worker) for g in fresh.values() for i in g.job_ids]
    assigned += [(i, gid, leaders[gid].lease_owner) for gid, ids in joins.items() for i in ids]
    if assigned:
        counters.incr_many(
            {
                counters.BATCHES: 1,
                counters.BATCHED_JOBS: len(assigned),
                counters.DEDUPLICATED: len(assigned) - len(fresh),
            }
        )
    more = len(candidates) == batch_size and len(fresh) < free
    return Claim(list(fresh.values()), assigned=assigned, more=more)


def _start(
    job_ids: list[uuid.UUID], generation_id: uuid.UUID, worker: str, lease: Any, now: Any, *, first: bool
) -> None:
    updated = Job.objects.filter(id__in=job_ids, status=Status.PENDING).update(
        status=Status.PROCESSING,
        generation_id=generation_id,
        lease_owner=worker,
        lease_expires_at=lease,
        started_at=now,
        attempts=F("attempts") + 1,
        deduplicated=not first,
    )
    if first and len(job_ids) > 1:
        # The earliest job leads; the rest shared its generation.
        Job.objects.filter(id__in=job_ids[1:]).update(deduplicated=True)
    if updated != len(job_ids):
        logger.warning("claimed %d of %d jobs for generation %s", updated, len(job_ids), generation_id)


def _drop_abandoned(now: Any) -> None:
    """Cancel pending interactive jobs whose caller stopped waiting (its process died)."""
    gone = Job.objects.filter(
        kind=Kind.INTERACTIVE, status=Status.PENDING, caller_seen_at__lt=_caller_alive_since()
    ).update(
        status=Status.CANCELLED,
        finished_at=now,
        error_code="caller_gone",
        error_message="The caller stopped waiting before the request ran.",
    )
    if gone:
        counters.incr(counters.CANCELLED, gone)


def renew_leases(*, worker: str) -> set[uuid.UUID]:
    """Extend the leases of ``worker``'s jobs; returns the generations it still holds live jobs of."""
    with queue_lock():
        Job.objects.filter(status=Status.PROCESSING, lease_owner=worker).update(
            lease_expires_at=_lease_until()
        )
        alive = (
            Job.objects.filter(status=Status.PROCESSING, lease_owner=worker)
            .values_list("generation_id", flat=True)
            .distinct()
        )
        return set(alive)


def finish_generation(
    *, worker: str, generation_id: uuid.UUID, chunks: list[str], final: dict[str, Any]
) -> list[Job]:
    """Write the result to every live job of the generation, if ``worker`` still holds its lease."""
    now = timezone.now()
    with queue_lock():
        jobs = list(
            Job.objects.filter(
                generation_id=generation_id, status=Status.PROCESSING, lease_owner=worker
            ).only("id", "use_cache")
        )
        Job.objects.filter(id__in=[j.id for j in jobs], status=Status.PROCESSING).update(
            status=Status.COMPLETED,
            finished_at=now,
            result_chunks=chunks,
            result_content="".join(chunks),
            result_final=final,
            done_reason=str(final.get("done_reason", "")),
            lease_expires_at=None,
        )
    if jobs:
        counters.incr_many({counters.COMPLETED: len(jobs), counters.GENERATIONS: 1})
    return jobs


def fail_generation(
    *, worker: str, generation_id: uuid.UUID, error: ApiError, retryable: bool
) -> dict[str, int]:
    """Fail the generation's live jobs, or put queued ones back for another attempt."""
    now = timezone.now()
    with queue_lock():
        live = Job.objects.filter(generation_id=generation_id, status=Status.PROCESSING, lease_owner=worker)
        retry = 0
        if retryable:
            retry = live.filter(kind=Kind.QUEUED, attempts__lt=settings.QUEUE_MAX_ATTEMPTS).update(
                **_back_to_pending()
            )
        failed = live.update(
            status=Status.FAILED,
            finished_at=now,
            error_code=error.code,
            error_message=error.message,
            lease_expires_at=None,
        )
    if failed:
        counters.incr(counters.FAILED, failed)
    return {"retried": retry, "failed": failed}


def _back_to_pending() -> dict[str, Any]:
    return {
        "status": Status.PENDING,
        "generation_id": None,
        "lease_owner": "",
        "lease_expires_at": None,
        "started_at": None,
    }


def expire_leases() -> dict[str, int]:
    """Recover jobs whose worker died: re-queue them, or fail / cancel them with the reason; and
    cancel pending interactive jobs whose caller stopped waiting. Workers run it every poll."""
    now = timezone.now()
    with queue_lock():
        _drop_abandoned(now)
        lapsed = Job.objects.filter(status=Status.PROCESSING, lease_expires_at__lt=now)
        if not lapsed.exists():
            return {}
        outcome = _recover(lapsed, now, reason="its worker stopped renewing the lease")
    if outcome:
        logger.warning("recovered jobs with lapsed leases: %s", outcome)
    return outcome


def release_worker(*, worker: str) -> dict[str, int]:
    """On a clean shutdown, hand ``worker``'s jobs back at once instead of waiting for the lease."""
    now = timezone.now()
    with queue_lock():
        held = Job.objects.filter(status=Status.PROCESSING, lease_owner=worker)
        # Not the job's fault: the attempt does not count.
        held.filter(attempts__gt=0).update(attempts=F("attempts") - 1)
        return _recover(held, now, reason="its worker shut down")


def _recover(jobs: Any, now: Any, *, reason: str) -> dict[str, int]:
    requeued = jobs.filter(
        Q(kind=Kind.QUEUED, attempts__lt=settings.QUEUE_MAX_ATTEMPTS)
        | Q(kind=Kind.INTERACTIVE, caller_seen_at__gte=_caller_alive_since())
    ).update(**_back_to_pending())
    failed = jobs.filter(kind=Kind.QUEUED).update(
        status=Status.FAILED,
        finished_at=now,
        error_code="worker_lost",
        error_message=f"Gave up after {settings.QUEUE_MAX_ATTEMPTS} attempts: {reason}.",
        lease_expires_at=None,
    )
    cancelled = jobs.filter(kind=Kind.INTERACTIVE).update(
        status=Status.CANCELLED,
        finished_at=now,
        error_code="caller_gone",
        error_message="The caller stopped waiting before the request finished.",
        lease_expires_at=None,
    )
    if failed:
        counters.incr(counters.FAILED, failed)
    if cancelled:
        counters.incr(counters.CANCELLED, cancelled)
    return {k: v for k, v in {"requeued": requeued, "failed": failed, "cancelled": cancelled}.items() if v}


def find_by_idempotency_key(*, owner: str, key: str) -> Job | None:
    """The request an earlier submission with this Idempotency-Key created, if any."""
    return Job.objects.filter(owner=owner, idempotency_key=key).first()


def touch_caller(*, job_id: uuid.UUID) -> None:
    """An interactive caller is still waiting for ``job_id``."""
    Job.objects.filter(id=job_id, status__in=ACTIVE).update(caller_seen_at=timezone.now())


# --- cancel --------------------------------------------------------------------------------------


@dataclass
class Cancelled:
    job: Job
    # Set when no live job is left in the generation: its worker must stop the upstream call.
    stop_generation: uuid.UUID | None = None
    stop_worker: str = ""


def cancel_request(
    *, job_id: uuid.UUID | str, owner: str | None = None, reason: str = "cancelled"
) -> Cancelled:
    """Cancel a pending or processing request; NotFound / Conflict otherwise."""
    now = timezone.now()
    with queue_lock():
        job = _get(job_id, owner)
        if job.status in TERMINAL:
            raise Conflict(f"Request {job.id} is already {job.status}.", code="already_finished")
        Job.objects.filter(id=job.id, status__in=ACTIVE).update(
            status=Status.CANCELLED,
            finished_at=now,
            error_code="cancelled",
            error_message=reason,
            lease_expires_at=None,
        )
        generation, worker = job.generation_id, job.lease_owner
        stop = None
        if job.status == Status.PROCESSING and generation is not None:
            others = Job.objects.filter(generation_id=generation, status=Status.PROCESSING).exists()
            stop = None if others else generation
        job.refresh_from_db()
    counters.incr(counters.CANCELLED)
    return Cancelled(job, stop_generation=stop, stop_worker=worker if stop else "")


# --- reading -------------------------------------------------------------------------------------


def _get(job_id: uuid.UUID | str, owner: str | None) -> Job:
    try:
        job_uuid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"No request with id {job_id!r}.", code="request_not_found") from None
    job = Job.objects.filter(id=job_uuid).first()
    # Another owner's request is reported exactly like a missing one.
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"No request with id {job_uuid}.", code="request_not_found")
    return job


def get_request(*, job_id: uuid.UUID | str, owner: str | None = None) -> Job:
    """A request by id, visible only to its owner (``None``: any owner)."""
    return _get(job_id, owner)


def queue_position(job: Job) -> int:
    """1-based place among pending jobs; 0 once it runs or finished.

    Counted in one query that includes the job itself only while it is still pending, so a job
    claimed since it was read does not show a place in a queue it has left.
    """
    if job.status != Status.PENDING:
        return 0
    return Job.objects.filter(status=Status.PENDING, rank__lte=job.rank).count()


_average_cache: tuple[float, float] = (0.0, float(DEFAULT_GENERATION_MS))  # (monotonic at, value)
AVERAGE_REFRESH_SECONDS = 1.0


def average_generation_ms() -> float:
    """Moving average of the last generations' durations (started to finished).

    An estimate for wait times, so each process recomputes it at most once a second rather than
    on every submission.
    """
    global _average_cache
    at, value = _average_cache
    if time.monotonic() - at < AVERAGE_REFRESH_SECONDS:
        return value
    value = _measure_average_generation_ms()
    _average_cache = (time.monotonic(), value)
    return value


def _measure_average_generation_ms() -> float:
    recent = list(
        Job.objects.filter(
            status=Status.COMPLETED, cached=False, deduplicated=False, started_at__isnull=False
        )
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[:RECENT_GENERATIONS]
    )
    if not recent:
        return float(DEFAULT_GENERATION_MS)
    total = sum((end - start).total_seconds() for start, end in recent)
    return total * 1000 / len(recent)


def wait_estimate_ms(position: int) -> int:
    """Expected wait before a job at ``position`` starts, in milliseconds."""
    if position <= 0:
        return 0
    rounds = math.ceil(position / settings.QUEUE_MAX_CONCURRENT)
    return int(rounds * average_generation_ms())


def queue_status(job: Job) -> dict[str, Any]:
    """The seed's status block for a request (place and queue length counted in one query)."""
    pending = Job.objects.filter(status=Status.PENDING)
    if job.status == Status.PENDING:
        counts = pending.aggregate(length=Count("id"), ahead=Count("id", filter=Q(rank__lte=job.rank)))
        length, position = counts["length"], counts["ahead"]
    else:
        length, position = pending.count(), 0
    return {
        "queue_position": position,
        "queue_length": length,
        "estimated_wait_time": wait_estimate_ms(position),
        "is_processing": job.status == Status.PROCESSING,
    }


def queue_overview() -> dict[str, Any]:
    """The queue's state for monitoring."""
    now = timezone.now()
    pending = Job.objects.filter(status=Status.PENDING)
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    by_priority = {
        str(row["priority"]): row["n"]
        for row in pending.values("priority").annotate(n=Count("id")).order_by("-priority")
    }
    by_status = {row["status"]: row["n"] for row in Job.objects.values("status").annotate(n=Count("id"))}
    return {
        "queue_length": by_status.get(Status.PENDING, 0),
        "processing": by_status.get(Status.PROCESSING, 0),
        "generations_in_flight": running_generations(),
        "max_concurrent": settings.QUEUE_MAX_CONCURRENT,
        "max_queue_size": settings.QUEUE_MAX_SIZE,
        "is_processing": by_status.get(Status.PROCESSING, 0) > 0,
        "oldest_wait_ms": int((now - oldest).total_seconds() * 1000) if oldest else 0,
        "pending_by_priority": by_priority,
        "by_status": {status: by_status.get(status, 0) for status in Status.values},
        "average_generation_ms": round(average_generation_ms(), 1),
    }
