"""What runs next, and why: the scheduler's rules in one place.

Read this module to learn how the queue decides; ``queueing.transitions`` applies the rules to the
table (each transition one short transaction under the queue lock), ``queueing.worker`` runs them.

1. **Slots.** At most a server's ``max_concurrent`` distinct generations run on it across the whole
   deployment (``[[ollama.servers]]``; with one ``[ollama] api_url``, ``[queue] max_concurrent``),
   counted from the table (every process sees the same count), and at most a model's cap of one
   model on one server (``[models."<name>"] max_concurrent``; by default 1 for embedding models
   and the architectures Ollama runs one at a time, which would otherwise only queue in Ollama's
   memory). A job runs only when rule 8 finds it a server with room.
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
   alone gets every slot (the pick is work-conserving). A job for a model loaded on a server with
   room goes before one that would swap models, unless that one has waited
   ``model_swap_after_seconds``.
3. **Batching.** A claim takes up to ``[batch] max_batch_size`` pending jobs at once. While every
   server that is in runs generations and fewer than a batch are pending, the worker waits up to
   ``[batch] batch_timeout_ms`` for a fuller batch; it never waits while an Ollama server is idle.
4. **Deduplication** (``[batch] enable_deduplication``). Jobs with the same cache key share one
   generation: identical pending jobs are claimed together, and a job identical to a running
   generation joins it (it takes no slot; its listener replays what was produced so far).
5. **Leases and heartbeats.** A claimed job carries its worker's lease for ``[queue] lease_seconds``,
   renewed every third of that, and every worker records a beat every ``[queue] heartbeat_seconds``.
   A job is recovered (see 6 and 7) when its worker is gone: its beat is three beats old, or its
   process on this host no longer exists (a restarted embedded server takes its predecessor's jobs
   at once), or, for a worker that never beat, its lease lapsed.
6. **Retries.** A queued request (``/api/chat-queue``) whose generation failed with a retryable code,
   or whose worker was lost, goes back to pending until it has had ``[queue] max_attempts`` tries;
   then it fails with the reason. It is not claimed again before a back-off: as long as it has been
   failing (``[queue] retry_base_seconds`` at first, so the wait doubles), at most
   ``retry_max_seconds``, ±25 % jitter. A failure that says Ollama is not there or not ready
   (connection refused, ``503`` busy: a restart or a model load) costs no attempt; it is retried
   until ``retry_window_seconds`` after the request's first failure. An interactive request is not
   retried on an upstream error (its caller is waiting and gets the error at once), except on
   another server when nothing was sent yet (rule 8).
7. **Caller liveness.** An interactive caller marks its job as watched every third of the lease.
   A pending interactive job whose caller has not been seen for a lease is cancelled
   (``caller_gone``) and never reaches Ollama; a lapsed processing one is re-queued only while its
   caller still watches.
8. **Routing** (several servers). A job picked by rule 2b runs on a server that is in (not taken
   out by ``queueing.fleet``'s circuit breaker), that configuration lets serve the model
   (``models``), that has the model (its ``/api/tags``; when no server in has it, any of them, and
   Ollama's own 404 answers), and that has room (rule 1). Of those, in order: one where the model
   is loaded (its ``/api/ps``, or a generation of it running there); the one that served the same
   conversation last (``affinity``: a hash of its leading messages); the least busy relative to its
   capacity and weight (in flight / (max_concurrent x weight)); then the name. A server that failed
   since its last success goes last and runs one generation at a time until one succeeds (so a
   server that died takes at most ``failure_threshold`` more attempts before it is out), and a
   retry prefers a server other than the one its last attempt failed on. Dedup (rule 4) stays global: a job
   identical to a generation running on any server joins it. A request whose model no configured
   server may serve fails with ``model_not_found``; while every server that may serve it is out,
   an interactive one fails at once with ``ollama_unavailable`` and a queued one waits.
"""

from __future__ import annotations

import collections
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings

from core.owners import rules_for
from core.servers import SERVER_FAULT_CODES, Server, has_model, model_name
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


def defer_for_batch(*, allow_partial: bool, load: Load, pending: int) -> bool:
    """Whether to wait for a fuller batch instead of claiming ``pending`` jobs now."""
    busy = all(s.running > 0 for s in load.servers if s.up)
    return not allow_partial and busy and pending < claim_size()


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


def dedup_enabled() -> bool:
    return bool(settings.BATCH_ENABLE_DEDUPLICATION)


@dataclass
class Running:
    """A generation under way, as a pending job identical to it would join it."""

    generation_id: uuid.UUID
    worker: str
    lease_expires_at: datetime | None
    server: str = ""


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
    affinity: str = ""  # the conversation's leading-messages hash (rule 8)
    last_server: str = ""  # the server of its previous attempt, if it had one


@dataclass
class ServerLoad:
    """One server as the pick sees it: what runs there now, what it has and has loaded."""

    server: Server
    up: bool
    tags: frozenset[str] | None  # None: not probed yet
    loaded: set[str]  # its /api/ps, and the models running there
    last_error: str = ""
    failures: int = 0  # consecutive, since its last success
    running: int = 0
    running_by_model: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def name(self) -> str:
        return self.server.name

    def has(self, model: str) -> bool:
        return has_model(self.tags, model)

    @property
    def capacity(self) -> int:
        """Its max_concurrent; 1 while it has failed since its last success (rule 8)."""
        return 1 if self.failures else self.server.max_concurrent

    def room_for(self, job: Candidate) -> bool:
        if self.running >= self.capacity:
            return False
        return not job.model_cap or self.running_by_model[job.model] < job.model_cap

    def busy(self) -> float:
        return self.running / (self.server.max_concurrent * self.server.weight)

    def start(self, model: str) -> None:
        self.running += 1
        self.running_by_model[model] += 1
        self.loaded.add(model_name(model))


@dataclass
class Load:
    """What runs now, where, and what each owner received: the pick's view of the deployment."""

    servers: list[ServerLoad] = field(default_factory=list)
    running_by_owner: collections.Counter[str] = field(default_factory=collections.Counter)
    service: dict[str, float] = field(default_factory=dict)  # owner -> attained GPU seconds
    affinity: dict[str, str] = field(default_factory=dict)  # affinity key -> server that served it last
    now: float = field(default_factory=time.time)
    expected_cost: float = 10.0  # seconds charged in the pick for a generation it starts
    in_flight: dict[str, float] = field(default_factory=dict)  # owner -> seconds its generations ran

    def running(self) -> int:
        return sum(s.running for s in self.servers)

    def free(self) -> int:
        """New generations the servers that are in have room for."""
        return sum(max(0, s.capacity - s.running) for s in self.servers if s.up)

    def all_out(self) -> bool:
        return not any(s.up for s in self.servers)


def decayed(service: float, updated: float, now: float) -> float:
    """Attained service ``service`` measured at ``updated``, as of ``now``."""
    return service * math.pow(0.5, max(now - updated, 0.0) / settings.FAIRNESS_HALF_LIFE_SECONDS)


# --- 8. routing ----------------------------------------------------------------------------------


def route(job: Candidate, load: Load) -> ServerLoad | None:
    """The server ``job`` would run on now (rule 8), or None while none has room."""
    allowed = [s for s in load.servers if s.up and s.server.allows(job.model)]
    having = [s for s in allowed if s.has(job.model)] or allowed
    open_ = [s for s in having if s.room_for(job)]
    if len(open_) > 1 and job.last_server:
        open_ = [s for s in open_ if s.name != job.last_server] or open_
    if not open_:
        return None
    name = model_name(job.model)
    previous = load.affinity.get(job.affinity) if job.affinity else None
    return min(
        open_, key=lambda s: (s.failures > 0, name not in s.loaded, s.name != previous, s.busy(), s.name)
    )


def unroutable(model: str, load: Load) -> str | None:
    """Why no server could ever take ``model`` now: "not_served" (configuration lets none serve
    it) or "all_out" (every one that may is out); None when one may."""
    allowed = [s for s in load.servers if s.server.allows(model)]
    if not allowed:
        return "not_served"
    return None if any(s.up for s in allowed) else "all_out"


def another_server_for(model: str, failed: str, load: Load) -> bool:
    """Whether a server other than ``failed`` is in and may serve ``model`` (a failover target)."""
    return any(s.up and s.name != failed and s.server.allows(model) for s in load.servers)


# Each owner's first job that can run now, with the server it would run on (rule 8).
Head = tuple[Candidate, ServerLoad]


def _heads(by_owner: dict[str, list[Candidate]], taken: set[uuid.UUID], load: Load) -> list[Head]:
    heads = []
    for owner, jobs in by_owner.items():
        limit = rules_for(owner).max_in_flight
        if limit and load.running_by_owner[owner] >= limit:
            continue
        for job in jobs:
            server = None if job.id in taken else route(job, load)
            if server is not None:
                heads.append((job, server))
                break
    return heads


def _competing(heads: list[Head], load: Load) -> list[Head]:
    """The highest priority, and lower ones aged up to it (rule 2b)."""
    top = max(job.priority for job, _ in heads)
    aging = settings.QUEUE_PRIORITY_AGING_SECONDS
    if not aging:
        return [h for h in heads if h[0].priority == top]
    return [
        h for h in heads if h[0].priority == top or h[0].priority + (load.now - h[0].created) / aging >= top
    ]


def _loaded_first(heads: list[Head], load: Load) -> list[Head]:
    """Model affinity: a job whose model is loaded where it would run goes before one that would
    swap models, within the wait bound."""
    if not any(_runs_loaded(h) for h in heads):
        # Every head would load its model: there is no swap to avoid, so all compete on fair
        # share. (Keeping only the ones that waited the bound handed a cold server's slots to the
        # longest backlog, whoever had received the most.)
        return heads
    bound = settings.FAIRNESS_MODEL_SWAP_AFTER_SECONDS
    return [h for h in heads if _runs_loaded(h) or load.now - h[0].created >= bound]


def _runs_loaded(head: Head) -> bool:
    job, server = head
    return model_name(job.model) in server.loaded


def fairness_key(job: Candidate, load: Load) -> tuple[float, float]:
    """The least attained service per unit of weight wins; then the lower rank."""
    return (load.service.get(job.owner, 0.0) / rules_for(job.owner).weight, job.rank)


def plan_claim(
    by_owner: dict[str, list[Candidate]], running_by_key: dict[str, Running], size: int, load: Load
) -> ClaimPlan:
    """Pick up to ``size`` jobs for new generations on servers with room (rules 1-4 and 8).

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
        job, server = min(
            _loaded_first(_competing(heads, load), load), key=lambda h: fairness_key(h[0], load)
        )
        key = job.cache_key if dedup else str(job.id)
        if key in plan.fresh:
            plan.fresh[key].job_ids.append(job.id)
        else:
            loads = model_name(job.model) not in server.loaded
            plan.fresh[key] = Generation(
                uuid.uuid4(), job.endpoint, {}, job.cache_key, [job.id], server.name, loads_model=loads
            )
            server.start(job.model)
            load.running_by_owner[job.owner] += 1
            load.service[job.owner] = load.service.get(job.owner, 0.0) + load.expected_cost
        taken.add(job.id)
        plan.considered += 1
    return plan


# --- 5. leases -----------------------------------------------------------------------------------


def lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


def renew_every_seconds() -> float:
    return settings.QUEUE_LEASE_SECONDS / 3


# --- 6. retries ----------------------------------------------------------------------------------


def retryable(code: str) -> bool:
    """An upstream failure worth another attempt for a queued request (a server fault: the next
    try, perhaps on another server, may well succeed)."""
    return code in SERVER_FAULT_CODES


def max_attempts() -> int:
    return settings.QUEUE_MAX_ATTEMPTS


# Ollama is not there (refused, reset) or not ready (503 while loading or at its queue limit): a
# restart or a load, which waiting rides out. Retrying these costs no attempt within the window.
WAITING_CODES = frozenset({"ollama_unavailable", "ollama_busy"})


def costs_attempt(code: str) -> bool:
    return code not in WAITING_CODES


def retry_window_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.QUEUE_RETRY_WINDOW_SECONDS)


def retry_at(now: datetime, retry_until: datetime | None) -> datetime:
    """When a failed queued job may be claimed again: after as long as it has been failing (so
    the wait doubles), within [retry_base_seconds, retry_max_seconds], with +-25 % jitter."""
    failing = 0.0
    if retry_until is not None:
        first_failure = retry_until - timedelta(seconds=settings.QUEUE_RETRY_WINDOW_SECONDS)
        failing = (now - first_failure).total_seconds()
    wait = min(settings.QUEUE_RETRY_MAX_SECONDS, max(settings.QUEUE_RETRY_BASE_SECONDS, failing))
    return now + timedelta(seconds=wait * random.uniform(0.75, 1.25))  # jitter, not a secret


# --- 5. heartbeats -------------------------------------------------------------------------------


def heartbeat_every_seconds() -> float:
    return settings.QUEUE_HEARTBEAT_SECONDS


def beat_stale_before(now: datetime) -> datetime:
    """A worker whose last beat is older than this is gone (three beats missed)."""
    return now - timedelta(seconds=3 * settings.QUEUE_HEARTBEAT_SECONDS)


def process_gone(host: str, pid: int, this_host: str, *, runs_here: bool) -> bool:
    """Whether a worker's process on this host no longer exists (a killed predecessor). A process
    restarted in a container often gets its predecessor's pid: a worker with this process's pid
    that does not run here is gone too."""
    if host != this_host or pid <= 0:
        return False
    if pid == os.getpid():
        return not runs_here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- 7. caller liveness --------------------------------------------------------------------------


def caller_alive_since(now: datetime) -> datetime:
    """An interactive caller seen after this is still waiting."""
    return now - timedelta(seconds=settings.QUEUE_LEASE_SECONDS)


def touch_every_seconds() -> float:
    return settings.QUEUE_LEASE_SECONDS / 3


def watched_at_submission(kind: str, now: datetime) -> datetime | None:
    """An interactive job is watched from the moment it is submitted."""
    return now if kind == Kind.INTERACTIVE else None
