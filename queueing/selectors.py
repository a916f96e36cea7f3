"""Reads of the queue table: one request, its place, the queue's state, the wait estimate."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from core.errors import NotFound
from queueing.models import Job, Status

# Used for the wait estimate until some generations have been measured.
DEFAULT_GENERATION_MS = 10_000
RECENT_GENERATIONS = 20


def max_queue_size() -> int:
    return settings.QUEUE_MAX_QUEUE_SIZE


def get_request(*, job_id: uuid.UUID | str, owner: str | None = None) -> Job:
    """A request by id, visible only to its owner (``None``: any owner). Another owner's request
    is reported exactly like a missing one."""
    try:
        job_uuid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"No request with id {job_id!r}.", code="request_not_found") from None
    job = Job.objects.filter(id=job_uuid).first()
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"No request with id {job_uuid}.", code="request_not_found")
    return job


def find_by_idempotency_key(*, owner: str, key: str) -> Job | None:
    """The request an earlier submission with this Idempotency-Key created, if any."""
    return Job.objects.filter(owner=owner, idempotency_key=key).first()


def queue_position(job: Job) -> int:
    """1-based place among pending jobs; 0 once it runs or finished.

    Counted in one query that includes the job itself only while it is still pending, so a job
    claimed since it was read does not show a place in a queue it has left.
    """
    if job.status != Status.PENDING:
        return 0
    return Job.objects.pending().filter(rank__lte=job.rank).count()


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
    total = sum((end - start).total_seconds() for start, end in recent if start and end)
    return total * 1000 / len(recent)


def wait_estimate_ms(position: int) -> int:
    """Expected wait before a job at ``position`` starts, in milliseconds."""
    if position <= 0:
        return 0
    rounds = math.ceil(position / settings.QUEUE_MAX_CONCURRENT)
    return int(rounds * average_generation_ms())


def queue_status(job: Job) -> dict[str, Any]:
    """The status block of a request (place and queue length counted in one query)."""
    pending = Job.objects.pending()
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
    pending = Job.objects.pending()
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    by_priority = {
        str(row["priority"]): row["n"]
        for row in pending.values("priority").annotate(n=Count("id")).order_by("-priority")
    }
    by_status = {row["status"]: row["n"] for row in Job.objects.values("status").annotate(n=Count("id"))}
    return {
        "queue_length": by_status.get(Status.PENDING, 0),
        "processing": by_status.get(Status.PROCESSING, 0),
        "generations_in_flight": Job.objects.running_generations(),
        "max_concurrent": settings.QUEUE_MAX_CONCURRENT,
        "max_queue_size": max_queue_size(),
        "is_processing": by_status.get(Status.PROCESSING, 0) > 0,
        "oldest_wait_ms": int((now - oldest).total_seconds() * 1000) if oldest else 0,
        "pending_by_priority": by_priority,
        "by_status": {status: by_status.get(status, 0) for status in Status.values},
        "average_generation_ms": round(average_generation_ms(), 1),
    }
