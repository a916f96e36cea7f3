"""What runs next, and why: the scheduler's rules in one place.

Read this module to learn how the queue decides; ``queueing.transitions`` applies the rules to the
table (each transition one short transaction under the queue lock), ``queueing.worker`` runs them.

1. **Slots.** At most ``[queue] max_concurrent`` distinct generations run at Ollama across the whole
   deployment, counted from the table (every process sees the same count), and at most a model's
   cap of one model (``[models."<name>"] max_concurrent``; by default 1 for embedding models and the
   architectures Ollama runs one at a time, which would otherwise only queue in Ollama's memory).
2. **Order within an owner.** An owner's pending jobs are served by *rank*: submission time minus
   ``priority x [queue] priority_aging_seconds``, minus ``[fairness] streaming_head_start_seconds``
   for an interactive stream (a chat UI's title and tag calls wait behind the user's own answer).
   Higher priority first, FIFO within a priority; the rank is fixed at submission.
2b. **Fair share between owners.** When a slot frees, each owner offers its first job (one whose
   model has room, from an owner below its ``max_in_flight``). Of those, the highest priority
   competes, and any lower-priority one that has waited ``priority_aging_seconds`` per step of
   difference (ageing bounds starvation). Among them the job of the owner with the least *attained
   service* wins: the GPU seconds it received, halved every ``[fairness] half_life_seconds``,
   counting its generations in flight, divided by its weight; ties go to the lower rank. An owner
   alone gets every slot (the pick is work-conserving). A job for a model Ollama has loaded goes
   before one that would swap models, unless that one has waited ``model_swap_after_seconds``.
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

import collections
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings

from core.owners import rules_for
from queueing.models import Kind
from queueing.spec import Generation

# --- 2. order ------------------------------------------------------------------------------------


def rank(priority: int, submitted: float | None = None, *, streaming: bool = False) -> float:
    """The order of service of a job submitted at ``submitted`` (epoch seconds): lower runs first."""
    at = time.time() if submitted is None else submitted
    head_start = settings.FAIRNESS_STREAMING_HEAD_START_SECONDS if streaming else 0.0
    return at - priority * settings.QUEUE_PRIORITY_AGING_SECONDS - head_start


def priority_for(owner: str, priority: int) -> int:
    """A priority above the owner's ceiling (``[owners.<name>] max_priority``) is lowered to it."""
    ceiling = rules_for(owner).max_priority
    return priority if ceiling is None else min(priority, ceiling)


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
    considered: int = 0  # jobs taken from the candidates (identical extras not counted)

    def take_identical(self, job_id: uuid.UUID, cache_key: str) -> None:
        """An identical pending job beyond the batch shares a new generation: it costs nothing."""
        self.fresh[cache_key].job_ids.append(job_id)


@dataclass
class Candidate:
    """A pending job as the pick sees it."""

    id: uuid.UUID
    owner: str
    model: str
    cache_key: str
    endpoint: str
    priority: int
    rank: float
    created: float  # epoch seconds
    model_cap: int


@dataclass
class Load:
    """What runs now, and what each owner received: the pick's view of the deployment."""

    running_by_owner: collections.Counter[str] = field(default_factory=collections.Counter)
    running_by_model: collections.Counter[str] = field(default_factory=collections.Counter)
    service: dict[str, float] = field(default_factory=dict)  # owner -> attained GPU seconds
    loaded: set[str] | None = None  # models Ollama has loaded (None: unknown)
    now: float = field(default_factory=time.time)
    expected_cost: float = 10.0  # seconds charged in the pick for a generation it starts
    in_flight: dict[str, float] = field(default_factory=dict)  # owner -> seconds its generations ran


def decayed(service: float, updated: float, now: float) -> float:
    """Attained service ``service`` measured at ``updated``, as of ``now``."""
    return service * math.pow(0.5, max(now - updated, 0.0) / settings.FAIRNESS_HALF_LIFE_SECONDS)


def _has_room(job: Candidate, load: Load) -> bool:
    return not job.model_cap or load.running_by_model[job.model] < job.model_cap


def _heads(by_owner: dict[str, list[Candidate]], taken: set[uuid.UUID], load: Load) -> list[Candidate]:
    heads = []
    for owner, jobs in by_owner.items():
        limit = rules_for(owner).max_in_flight
        if limit and load.running_by_owner[owner] >= limit:
            continue
        head = next((j for j in jobs if j.id not in taken and _has_room(j, load)), None)
        if head is not None:
            heads.append(head)
    return heads


def _competing(heads: list[Candidate], load: Load) -> list[Candidate]:
    """The highest priority, and lower ones aged up to it (rule 2b)."""
    top = max(h.priority for h in heads)
    aging = settings.QUEUE_PRIORITY_AGING_SECONDS
    if not aging:
        return [h for h in heads if h.priority == top]
    return [h for h in heads if h.priority == top or h.priority + (load.now - h.created) / aging >= top]


def _loaded_first(heads: list[Candidate], load: Load) -> list[Candidate]:
    """Model affinity: a loaded model's job before one that would swap, within the wait bound."""
    if not load.loaded:
        return heads
    bound = settings.FAIRNESS_MODEL_SWAP_AFTER_SECONDS
    keep = [h for h in heads if h.model in load.loaded or load.now - h.created >= bound]
    return keep or heads


def fairness_key(job: Candidate, load: Load) -> tuple[float, float]:
    """The least attained service per unit of weight wins; then the lower rank."""
    return (load.service.get(job.owner, 0.0) / rules_for(job.owner).weight, job.rank)


def plan_claim(
    by_owner: dict[str, list[Candidate]], running_by_key: dict[str, Running], free: int, size: int, load: Load
) -> ClaimPlan:
    """Pick up to ``size`` jobs for at most ``free`` new generations (rules 1-4).

    ``by_owner``: each owner's first pending jobs, in rank order. A job identical to a running
    generation joins it (no slot); identical jobs share one new generation.
    """
    plan = ClaimPlan()
    dedup = dedup_enabled()
    taken: set[uuid.UUID] = set()
    if dedup and running_by_key:
        for jobs in by_owner.values():
            for job in jobs:
                if job.cache_key in running_by_key:
                    plan.joins.setdefault(running_by_key[job.cache_key].generation_id, []).append(job.id)
                    taken.add(job.id)
    while plan.considered < size:
        heads = _heads(by_owner, taken, load)
        if not heads:
            break
        job = min(_loaded_first(_competing(heads, load), load), key=lambda h: fairness_key(h, load))
        key = job.cache_key if dedup else str(job.id)
        if key in plan.fresh:
            plan.fresh[key].job_ids.append(job.id)
        elif len(plan.fresh) < free:
            plan.fresh[key] = Generation(uuid.uuid4(), job.endpoint, {}, job.cache_key, [job.id])
            load.running_by_owner[job.owner] += 1
            load.running_by_model[job.model] += 1
            load.service[job.owner] = load.service.get(job.owner, 0.0) + load.expected_cost
        else:
            break
        taken.add(job.id)
        plan.considered += 1
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
