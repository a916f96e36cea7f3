"""What runs next, and why: the scheduler's rules in one place.

Read this module to learn how the queue decides; ``queueing.transitions`` applies the rules to the
table (each transition one short transaction under the queue lock), ``queueing.worker`` runs them.

1. **Slots.** At most ``[queue] max_concurrent`` distinct generations run at Ollama across the whole
   deployment, counted from the table (every process sees the same count).
2. **Order.** Pending jobs are served by *rank*: submission time minus ``priority x
   [queue] priority_aging_seconds``. Higher priority runs first, FIFO within a priority, and ageing
   bounds starvation: a priority-0 request submitted 30 s before a priority-1 one (at the default 30 s
   per step) is served first. The rank is fixed at submission, so an index serves the order.
3. **Batching.** A claim takes up to ``[batch] max_batch_size`` pending jobs at once. While other
   generations run and fewer than a batch are pending, the worker waits up to
   ``[batch] batch_timeout_ms`` for a fuller batch; it never waits while Ollama is idle.
4. **Deduplication** (``[batch] enable_deduplication``). Jobs with the same cache key share one
   generation: identical pending jobs are claimed together, and a job identical to a running
   generation joins it (it takes no slot; its listener replays what was produced so far).
5. **Leases.** A claimed job carries its worker's lease for ``[queue] lease_seconds``, renewed every
   third of that. A job whose lease lapsed (its worker died) is recovered: see 6 and 7.
6. **Retries.** A queued request (``/api/chat-queue``) whose generation failed with a retryable code,
   or whose worker was lost, goes back to pending until it has had ``[queue] max_attempts`` tries;
   then it fails with the reason. An interactive request is not retried on an upstream error: its
   caller is waiting and gets the error at once.
7. **Caller liveness.** An interactive caller marks its job as watched every third of the lease.
   A pending interactive job whose caller has not been seen for a lease is cancelled
   (``caller_gone``) and never reaches Ollama; a lapsed processing one is re-queued only while its
   caller still watches.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from queueing.models import Kind
from queueing.spec import Generation

# --- 2. order ------------------------------------------------------------------------------------


def rank(priority: int, submitted: float | None = None) -> float:
    """The order of service of a job submitted at ``submitted`` (epoch seconds): lower runs first."""
    at = time.time() if submitted is None else submitted
    return at - priority * settings.QUEUE_PRIORITY_AGING_SECONDS


# --- 3. batching ---------------------------------------------------------------------------------


def claim_size() -> int:
    """How many pending jobs one claim considers."""
    return settings.BATCH_MAX_BATCH_SIZE


def defer_for_batch(*, allow_partial: bool, running: int, pending: int) -> bool:
    """Whether to wait for a fuller batch instead of claiming ``pending`` jobs now."""
    return not allow_partial and running > 0 and pending < claim_size()


class BatchWait:
    """The worker's side of rule 3: since when it has been waiting for a fuller batch."""

    def __init__(self) -> None:
        self.since: float | None = None

    @staticmethod
    def _timeout() -> float:
        return settings.BATCH_TIMEOUT_MS / 1000

    def allow_partial(self) -> bool:
        """A partial batch may be claimed: batching is off, or the wait is over."""
        if settings.BATCH_TIMEOUT_MS == 0:
            return True
        return self.since is not None and time.monotonic() - self.since >= self._timeout()

    def deferred(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def claimed(self) -> None:
        self.since = None

    def sleep_for(self, poll_seconds: float) -> float:
        """How long the worker may sleep before it must look again."""
        if self.since is None:
            return poll_seconds
        remaining = self._timeout() - (time.monotonic() - self.since)
        return max(0.0, min(poll_seconds, remaining))


# --- 1 + 4. slots and deduplication --------------------------------------------------------------


def free_slots(running: int) -> int:
    return settings.QUEUE_MAX_CONCURRENT - running


def dedup_enabled() -> bool:
    return bool(settings.BATCH_ENABLE_DEDUPLICATION)


@dataclass
class Running:
    """A generation under way, as a pending job identical to it would join it."""

    generation_id: uuid.UUID
    worker: str
    lease_expires_at: datetime | None


@dataclass
class ClaimPlan:
    fresh: dict[str, Generation] = field(default_factory=dict)  # new generations by dedup key
    joins: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)  # running gen -> jobs

    def take_identical(self, job_id: uuid.UUID, cache_key: str) -> None:
        """An identical pending job beyond the batch shares a new generation: it costs nothing."""
        self.fresh[cache_key].job_ids.append(job_id)


def plan_claim(candidates: list[Any], running_by_key: dict[str, Running], free: int) -> ClaimPlan:
    """Group candidate jobs (in rank order) into new generations and joins of running ones.

    A candidate identical to a running generation joins it; identical candidates share one new
    generation; at most ``free`` new generations start. Candidates beyond that wait.
    """
    plan = ClaimPlan()
    dedup = dedup_enabled()
    for job in candidates:
        key = job.cache_key if dedup else str(job.id)
        if dedup and job.cache_key in running_by_key:
            plan.joins.setdefault(running_by_key[job.cache_key].generation_id, []).append(job.id)
        elif key in plan.fresh:
            plan.fresh[key].job_ids.append(job.id)
        elif len(plan.fresh) < free:
            plan.fresh[key] = Generation(uuid.uuid4(), job.endpoint, job.payload, job.cache_key, [job.id])
    return plan


# --- 5. leases -----------------------------------------------------------------------------------


def lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


def renew_every_seconds() -> float:
    return settings.QUEUE_LEASE_SECONDS / 3


# --- 6. retries ----------------------------------------------------------------------------------

# Upstream failures worth another attempt for a queued request: the next try may well succeed.
RETRYABLE_CODES = frozenset(
    {"ollama_unavailable", "ollama_timeout", "ollama_busy", "ollama_bad_response", "ollama_error"}
)


def retryable(code: str) -> bool:
    return code in RETRYABLE_CODES


def max_attempts() -> int:
    return settings.QUEUE_MAX_ATTEMPTS


# --- 7. caller liveness --------------------------------------------------------------------------


def caller_alive_since(now: datetime) -> datetime:
    """An interactive caller seen after this is still waiting."""
    return now - timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


def touch_every_seconds() -> float:
    return settings.QUEUE_LEASE_SECONDS / 3


def watched_at_submission(kind: str, now: datetime) -> datetime | None:
    """An interactive job is watched from the moment it is submitted."""
    return now if kind == Kind.INTERACTIVE else None
