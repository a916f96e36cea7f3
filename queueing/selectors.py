"""Reads of the queue table: one request, its place, the queue's state, the wait estimate."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from core import clock, servers
from core.errors import NotFound
from core.owners import rules_for
from queueing.models import Job, OwnerService, Status

# Used for the wait estimate until some generations have been measured.
DEFAULT_GENERATION_MS = 10_000
RECENT_GENERATIONS = 20
AVERAGE_WINDOW_ROWS = 1_000  # completed rows the average looks through, newest first


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
    """The last RECENT_GENERATIONS generations among the last AVERAGE_WINDOW_ROWS completed rows.

    The window is read through job_finished_idx (status, finished_at), newest first: cache hits and
    deduplicated jobs complete rows too, and without the bound a run of them made this read every
    completed row in the table (it runs on every /api/cache-stats and /metrics call)."""
    window = (
        Job.objects.filter(status=Status.COMPLETED)
        .order_by("-finished_at")
        .values("id")[:AVERAGE_WINDOW_ROWS]
    )
    recent = list(
        Job.objects.filter(id__in=window, cached=False, deduplicated=False, started_at__isnull=False)
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
    rounds = math.ceil(position / servers.total_capacity())
    return int(rounds * average_generation_ms())


def queue_status(job: Job) -> dict[str, Any]:
    """The status block of a request (place and queue length counted in one query)."""
    pending = Job.objects.pending()
    if job.status == Status.PENDING:
        counts = pending.aggregate(length=Count("id"), ahead=Count("id", filter=Q(rank__lte=job.rank)))
        length, position = counts["length"], counts["ahead"]
    else:
        length, position = pending.count(), 0
    status = {
        "queue_position": position,
        "queue_length": length,
        "estimated_wait_time": wait_estimate_ms(position),
        "is_processing": job.status == Status.PROCESSING,
    }
    if job.status == Status.PENDING:
        status["waiting"] = waiting_reason(job)
    return status


def waiting_reason(job: Job) -> dict[str, Any]:
    """Why a pending request waits: every slot busy (``slots``), its owner's in-flight limit
    (``owner_limit``) or its model's cap (``model_busy``); and how many of its owner's own requests
    are ahead of it (between owners the fair share decides, not the arrival order)."""
    own_ahead = Job.objects.pending().filter(owner=job.owner, rank__lt=job.rank).count()
    running = Job.objects.running()
    limit = rules_for(job.owner).max_in_flight
    reason = "slots"
    if limit and running.filter(owner=job.owner).values("generation_id").distinct().count() >= limit:
        reason = "owner_limit"
    elif (
        job.model_cap
        and running.filter(model=job.model).values("generation_id").distinct().count() >= job.model_cap
    ):
        reason = "model_busy"
    return {"reason": reason, "owner_requests_ahead": own_ahead}


def queue_overview() -> dict[str, Any]:
    """The queue's state for monitoring (every /api/cache-stats and /metrics call).

    It reads only indexed or bounded rows: the pending and processing rows (the live queue, found
    through the status indexes), the counts by status from job_finished_idx (status, finished_at)
    alone (an index-only scan on SQLite: the table is never read; the finished rows it counts are
    bounded by queueing.retention), and the average over the last AVERAGE_WINDOW_ROWS completed
    rows (``_measure_average_generation_ms``)."""
    now = timezone.now()
    pending = Job.objects.pending()
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    by_priority = {
        str(row["priority"]): row["n"]
        for row in pending.values("priority").annotate(n=Count("id")).order_by("-priority")
    }
    # COUNT(*), not COUNT(id): the id is not in the index, and counting it read every row.
    by_status = {
        row["status"]: row["n"] for row in Job.objects.order_by().values("status").annotate(n=Count("*"))
    }
    return {
        **_by_owner_and_model(pending),
        "queue_length": by_status.get(Status.PENDING, 0),
        "processing": by_status.get(Status.PROCESSING, 0),
        "generations_in_flight": Job.objects.running_generations(),
        "max_concurrent": servers.total_capacity(),
        "max_queue_size": max_queue_size(),
        "is_processing": by_status.get(Status.PROCESSING, 0) > 0,
        "oldest_wait_ms": int((now - oldest).total_seconds() * 1000) if oldest else 0,
        "pending_by_priority": by_priority,
        "by_status": {status: by_status.get(status, 0) for status in Status.values},
        "average_generation_ms": round(average_generation_ms(), 1),
    }


def _by_owner_and_model(pending: Any) -> dict[str, Any]:
    """Pending and running per owner and per model, and each owner's recent share of GPU time."""
    running = Job.objects.running().values("generation_id").annotate(owner=Min("owner"), model=Min("model"))
    running_by_owner: dict[str, int] = {}
    running_by_model: dict[str, int] = {}
    for row in running:
        running_by_owner[row["owner"]] = running_by_owner.get(row["owner"], 0) + 1
        running_by_model[row["model"]] = running_by_model.get(row["model"], 0) + 1
    now = clock.now()
    half_life = settings.FAIRNESS_HALF_LIFE_SECONDS
    service = {
        owner: value * 0.5 ** (max(now - updated, 0) / half_life)
        for owner, value, updated in OwnerService.objects.values_list("owner", "service", "updated")
    }
    total = sum(service.values())
    pending_by_owner = dict(pending.values_list("owner").annotate(n=Count("id")).order_by())
    owners = sorted(
        set(pending_by_owner) | set(running_by_owner) | {o for o, v in service.items() if v > 0.001}
    )
    return {
        "pending_by_owner": pending_by_owner,
        "running_by_owner": running_by_owner,
        "pending_by_model": dict(pending.values_list("model").annotate(n=Count("id")).order_by()),
        "running_by_model": running_by_model,
        "running_by_server": running_by_server(),
        "owners": {
            owner: {
                "pending": pending_by_owner.get(owner, 0),
                "running": running_by_owner.get(owner, 0),
                "recent_gpu_seconds": round(service.get(owner, 0.0), 3),
                "recent_share": round(service.get(owner, 0.0) / total, 4) if total else 0.0,
                "weight": rules_for(owner).weight,
            }
            for owner in owners
        },
    }


def running_by_server() -> dict[str, int]:
    """Generations in flight on each Ollama server."""
    rows = Job.objects.running().values("generation_id").annotate(server=Min("server"))
    found: dict[str, int] = dict.fromkeys(servers.names(), 0)
    for row in rows:
        found[row["server"]] = found.get(row["server"], 0) + 1
    return found
