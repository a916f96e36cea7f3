"""The queue's state transitions: enqueue, claim, renew, finish, fail, expire, release, cancel.

Each transition is one short transaction under the queue lock (PostgreSQL: a transaction-level
advisory lock; SQLite: ``BEGIN IMMEDIATE`` already serialises writers), so "at most max_concurrent
generations", "exactly max_queue_size accepted" and "a result is written once, by the lease holder"
hold across every process. The rules they apply live in ``queueing.policy``. These functions are
blocking; async callers use ``core.runtime.run_blocking``.

    pending ──claim──▶ processing ──finish──▶ completed
       │                  │  ├──fail (retryable, attempts left)──▶ pending
       │                  │  └──fail / lease lapsed, no attempts left──▶ failed
       └──cancel──────────┴──cancel / caller gone──▶ cancelled
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import ApiError, Conflict, TooManyRequests
from core.generation import Chunk, content_of
from queueing import policy, selectors
from queueing.models import ACTIVE, TERMINAL, Job, JobQuerySet, Kind, Status
from queueing.spec import Claim, JobSpec
from stats import counters

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process of the deployment.
_QUEUE_LOCK_KEY = 0x63686174  # "chat"


@contextlib.contextmanager
def queue_lock() -> Iterator[None]:
    """A transaction that no other queue transition runs alongside."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_QUEUE_LOCK_KEY])
        yield


def _new_job(spec: JobSpec, **fields: Any) -> Job:
    """An unsaved row; its rank puts it after earlier requests of its priority (with ageing)."""
    return Job(
        kind=spec.kind, endpoint=spec.endpoint, model=spec.model, payload=spec.payload,
        cache_key=spec.cache_key, priority=spec.priority, rank=policy.rank(spec.priority),
        owner=spec.owner, use_cache=spec.use_cache, idempotency_key=spec.idempotency_key or None,
        **fields,
    )  # fmt: skip


# --- enqueue -------------------------------------------------------------------------------------


@dataclass
class Enqueued:
    job: Job
    created: bool  # False when an Idempotency-Key matched an earlier request
    joined: bool = False  # attached to an identical generation already running


def enqueue_request(spec: JobSpec) -> Enqueued:
    """Store a request as pending (or join an identical running generation); 429 when full."""
    now = timezone.now()
    with queue_lock():
        if spec.idempotency_key:
            existing = selectors.find_by_idempotency_key(owner=spec.owner, key=spec.idempotency_key)
            if existing is not None:
                return Enqueued(existing, created=False)
        job = _new_job(spec, caller_seen_at=policy.watched_at_submission(spec.kind, now))
        running = _running_generation(spec.cache_key) if policy.dedup_enabled() else None
        if running is not None:
            # The identical generation is under way: share it (its listeners replay from the start).
            job.status = Status.PROCESSING
            job.generation_id = running.generation_id
            job.lease_owner = running.lease_owner
            job.lease_expires_at = running.lease_expires_at
            job.started_at = now
            job.attempts = 1
            job.deduplicated = True
        elif Job.objects.pending().count() >= selectors.max_queue_size():
            raise TooManyRequests(
                f"The queue is full ({selectors.max_queue_size()} pending requests); try again shortly.",
                code="queue_full",
                retry_after=max(1, math.ceil(selectors.average_generation_ms() / 1000)),
            )
        try:
            job.save(force_insert=True)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won (only possible without the lock).
            existing = Job.objects.get(owner=spec.owner, idempotency_key=spec.idempotency_key)
            return Enqueued(existing, created=False)
    counters.incr(counters.REQUESTS_QUEUED)
    if running is not None:
        counters.incr(counters.DEDUPLICATED)
    return Enqueued(job, created=True, joined=running is not None)


def _running_generation(cache_key: str) -> Job | None:
    return (
        Job.objects.running()
        .filter(cache_key=cache_key)
        .only("generation_id", "lease_owner", "lease_expires_at")
        .order_by("started_at")
        .first()
    )


def complete_from_cache(spec: JobSpec, entry: dict[str, Any]) -> Job:
    """Record a request answered from the response cache as a completed row (for /api/chat-queue)."""
    now = timezone.now()
    final = entry.get("final") or {}
    job = _new_job(
        spec, status=Status.COMPLETED, started_at=now, finished_at=now, cached=True,
        result_chunks=entry["chunks"], result_content=content_of(entry["chunks"]), result_final=final,
        done_reason=str(final.get("done_reason", "stop")),
    )  # fmt: skip
    job.save(force_insert=True)
    return job


# --- the worker's side ---------------------------------------------------------------------------


def claim_batch(*, worker: str, allow_partial: bool = True) -> Claim:
    """Claim the next batch of pending jobs for ``worker``, within the free generation slots
    (``queueing.policy`` rules 1-4)."""
    now = timezone.now()
    with queue_lock():
        running = Job.objects.running_generations()
        free = policy.free_slots(running)
        if free <= 0:
            return Claim([])
        size = policy.claim_size()
        candidates = list(
            Job.objects.select_for_update(skip_locked=True)
            .pending()
            .only("id", "endpoint", "payload", "cache_key")
            .order_by("rank")[:size]
        )
        if not candidates:
            return Claim([])
        if policy.defer_for_batch(allow_partial=allow_partial, running=running, pending=len(candidates)):
            return Claim([], deferred=True)
        running_by_key = _running_by_key({job.cache_key for job in candidates}) if running else {}
        plan = policy.plan_claim(candidates, running_by_key, free)
        if policy.dedup_enabled() and plan.fresh and len(candidates) == size:
            # Identical pending jobs beyond the batch share the new generations too.
            # (With fewer candidates than the batch size, every pending job was already a candidate.)
            taken = [i for g in plan.fresh.values() for i in g.job_ids]
            extra = (
                Job.objects.select_for_update(skip_locked=True)
                .pending()
                .filter(cache_key__in=list(plan.fresh))
                .exclude(id__in=taken)
            )
            for job_id, key in extra.order_by("rank").values_list("id", "cache_key"):
                plan.take_identical(job_id, key)
        lease = policy.lease_until(now)
        for generation in plan.fresh.values():
            _start(generation.job_ids, generation.generation_id, worker, lease, now, first=True)
        leaders = {r.generation_id: r for r in running_by_key.values()}
        for generation_id, job_ids in plan.joins.items():
            leader = leaders[generation_id]
            _start(job_ids, generation_id, leader.worker, leader.lease_expires_at, now, first=False)
    assigned = [(i, g.generation_id, worker) for g in plan.fresh.values() for i in g.job_ids]
    assigned += [(i, gid, leaders[gid].worker) for gid, ids in plan.joins.items() for i in ids]
    if assigned:
        counters.incr_many(
            {
                counters.BATCHES: 1,
                counters.BATCHED_JOBS: len(assigned),
                counters.DEDUPLICATED: len(assigned) - len(plan.fresh),
            }
        )
    more = len(candidates) == size and len(plan.fresh) < free
    return Claim(list(plan.fresh.values()), assigned=assigned, more=more)


def _running_by_key(keys: set[str]) -> dict[str, policy.Running]:
    if not policy.dedup_enabled():
        return {}
    found: dict[str, policy.Running] = {}
    rows = Job.objects.running().filter(cache_key__in=keys)
    for job in rows.only("cache_key", "generation_id", "lease_owner", "lease_expires_at"):
        assert job.generation_id is not None  # running() rows have one
        found.setdefault(
            job.cache_key, policy.Running(job.generation_id, job.lease_owner, job.lease_expires_at)
        )
    return found


def _start(
    job_ids: list[uuid.UUID],
    generation_id: uuid.UUID,
    worker: str,
    lease: datetime | None,
    now: datetime,
    *,
    first: bool,
) -> None:
    updated = (
        Job.objects.pending()
        .filter(id__in=job_ids)
        .update(
            status=Status.PROCESSING,
            generation_id=generation_id,
            lease_owner=worker,
            lease_expires_at=lease,
            started_at=now,
            attempts=F("attempts") + 1,
            deduplicated=not first,
        )
    )
    if first and len(job_ids) > 1:
        # The earliest job leads; the rest shared its generation.
        Job.objects.filter(id__in=job_ids[1:]).update(deduplicated=True)
    if updated != len(job_ids):
        logger.warning("claimed %d of %d jobs for generation %s", updated, len(job_ids), generation_id)


def renew_leases(*, worker: str) -> set[uuid.UUID]:
    """Extend the leases of ``worker``'s jobs; returns the generations it still holds live jobs of."""
    with queue_lock():
        held = Job.objects.held_by(worker)
        held.update(lease_expires_at=policy.lease_until(timezone.now()))
        return {gid for gid in held.values_list("generation_id", flat=True).distinct() if gid is not None}


def finish_generation(
    *, worker: str, generation_id: uuid.UUID, chunks: list[Chunk], final: dict[str, Any]
) -> list[Job]:
    """Write the result to every live job of the generation, if ``worker`` still holds its lease."""
    now = timezone.now()
    with queue_lock():
        live = Job.objects.in_generation(generation_id).filter(lease_owner=worker)
        jobs = list(live.only("id", "use_cache"))
        Job.objects.filter(id__in=[j.id for j in jobs], status=Status.PROCESSING).finish(
            status=Status.COMPLETED,
            finished_at=now,
            result_chunks=chunks,
            result_content=content_of(chunks),
            result_final=final,
            done_reason=str(final.get("done_reason", "")),
        )
    if jobs:
        counters.incr_many({counters.COMPLETED: len(jobs), counters.GENERATIONS: 1})
    return jobs


def fail_generation(*, worker: str, generation_id: uuid.UUID, error: ApiError) -> dict[str, int]:
    """Fail the generation's live jobs, or put queued ones back for another attempt (rule 6)."""
    now = timezone.now()
    with queue_lock():
        live = Job.objects.in_generation(generation_id).filter(lease_owner=worker)
        retry = 0
        if policy.retryable(error.code):
            retry = live.filter(kind=Kind.QUEUED, attempts__lt=policy.max_attempts()).update(
                **_back_to_pending()
            )
        failed = live.finish(
            status=Status.FAILED, finished_at=now, error_code=error.code, error_message=error.message
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
    """Recover jobs whose worker died (rules 5-7), and cancel pending interactive jobs whose caller
    stopped waiting. Workers run it every poll."""
    now = timezone.now()
    with queue_lock():
        _drop_abandoned(now)
        lapsed = Job.objects.lapsed(now)
        if not lapsed.exists():
            return {}
        outcome = _recover(lapsed, now, reason="its worker stopped renewing the lease")
    if outcome:
        logger.warning("recovered jobs with lapsed leases: %s", outcome)
    return outcome


def _drop_abandoned(now: datetime) -> None:
    """Cancel pending interactive jobs whose caller stopped waiting (its process died)."""
    gone = (
        Job.objects.pending()
        .filter(kind=Kind.INTERACTIVE, caller_seen_at__lt=policy.caller_alive_since(now))
        .finish(
            status=Status.CANCELLED,
            finished_at=now,
            error_code="caller_gone",
            error_message="The caller stopped waiting before the request ran.",
        )
    )
    if gone:
        counters.incr(counters.CANCELLED, gone)


def release_worker(*, worker: str) -> dict[str, int]:
    """On a clean shutdown, hand ``worker``'s jobs back at once instead of waiting for the lease."""
    now = timezone.now()
    with queue_lock():
        held = Job.objects.held_by(worker)
        # Not the job's fault: the attempt does not count.
        held.filter(attempts__gt=0).update(attempts=F("attempts") - 1)
        return _recover(held, now, reason="its worker shut down")


def _recover(jobs: JobQuerySet, now: datetime, *, reason: str) -> dict[str, int]:
    requeued = jobs.filter(
        Q(kind=Kind.QUEUED, attempts__lt=policy.max_attempts())
        | Q(kind=Kind.INTERACTIVE, caller_seen_at__gte=policy.caller_alive_since(now))
    ).update(**_back_to_pending())
    failed = jobs.filter(kind=Kind.QUEUED).finish(
        status=Status.FAILED,
        finished_at=now,
        error_code="worker_lost",
        error_message=f"Gave up after {policy.max_attempts()} attempts: {reason}.",
    )
    cancelled = jobs.filter(kind=Kind.INTERACTIVE).finish(
        status=Status.CANCELLED,
        finished_at=now,
        error_code="caller_gone",
        error_message="The caller stopped waiting before the request finished.",
    )
    if failed:
        counters.incr(counters.FAILED, failed)
    if cancelled:
        counters.incr(counters.CANCELLED, cancelled)
    return {k: v for k, v in {"requeued": requeued, "failed": failed, "cancelled": cancelled}.items() if v}


def touch_caller(*, job_id: uuid.UUID) -> None:
    """An interactive caller is still waiting for ``job_id`` (rule 7)."""
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
        job = selectors.get_request(job_id=job_id, owner=owner)
        if job.status in TERMINAL:
            raise Conflict(f"Request {job.id} is already {job.status}.", code="already_finished")
        Job.objects.filter(id=job.id, status__in=ACTIVE).finish(
            status=Status.CANCELLED, finished_at=now, error_code="cancelled", error_message=reason
        )
        generation, worker = job.generation_id, job.lease_owner
        stop = None
        if job.status == Status.PROCESSING and generation is not None:
            stop = None if Job.objects.in_generation(generation).exists() else generation
        job.refresh_from_db()
    counters.incr(counters.CANCELLED)
    return Cancelled(job, stop_generation=stop, stop_worker=worker if stop else "")
