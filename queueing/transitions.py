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
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Min, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.caches import entry_chunks
from core import clock
from core.errors import ApiError, Conflict, OwnerLimit, QuotaExceeded, TooManyRequests
from core.generation import Chunk, content_of
from core.owners import OwnerRules, rules_for
from core.servers import is_server_fault
from queueing import fleet, policy, retention, selectors
from queueing.models import ACTIVE, TERMINAL, Job, JobQuerySet, Kind, OwnerService, Status, WorkerBeat
from queueing.spec import Claim, JobSpec
from stats import counters, usage

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
    priority = policy.priority_for(spec.owner, spec.priority)
    streaming = spec.streaming and spec.kind == Kind.INTERACTIVE
    return Job(
        kind=spec.kind, endpoint=spec.endpoint, model=spec.model, payload=spec.payload,
        cache_key=spec.cache_key, priority=priority, rank=policy.rank(priority, streaming=streaming),
        owner=spec.owner, use_cache=spec.use_cache, idempotency_key=spec.idempotency_key or None,
        model_cap=spec.model_cap, affinity=spec.affinity, history=spec.history, **fields,
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
            job.server = running.server
            job.started_at = now
            job.attempts = 1
            job.deduplicated = True
        else:
            _admit(spec)
        existing = _insert_once(job, spec)
        if existing is not None:
            return Enqueued(existing, created=False)
        counters.record({counters.REQUESTS_QUEUED: 1, counters.DEDUPLICATED: int(running is not None)})
    return Enqueued(job, created=True, joined=running is not None)


def _admit(spec: JobSpec) -> None:
    """The admission checks of a request that will wait for a slot: the queue's size, the owner's
    pending limit, the owner's quotas (429 with Retry-After for each, with its own code)."""
    retry = max(1, math.ceil(selectors.average_generation_ms() / 1000))
    if Job.objects.pending().count() >= selectors.max_queue_size():
        raise TooManyRequests(
            f"The queue is full ({selectors.max_queue_size()} pending requests); try again shortly.",
            code="queue_full",
            retry_after=retry,
        )
    rules = rules_for(spec.owner)
    if rules.max_pending and Job.objects.pending().filter(owner=spec.owner).count() >= rules.max_pending:
        raise OwnerLimit(
            f"This owner has {rules.max_pending} requests waiting, its limit; try again when one has run.",
            retry_after=retry,
        )
    if rules.has_quota:
        error = quota_error(spec.owner, rules)
        if error is not None:
            raise error


def _running_generation(cache_key: str) -> Job | None:
    return (
        Job.objects.running()
        .filter(cache_key=cache_key)
        .only("generation_id", "lease_owner", "lease_expires_at", "server")
        .order_by("started_at")
        .first()
    )


def complete_from_cache(spec: JobSpec, entry: dict[str, Any]) -> Job:
    """Record a request answered from the response cache as a completed row (for /api/chat-queue)."""
    now = timezone.now()
    final = entry.get("final") or {}
    chunks = list(entry_chunks(entry))
    job = _new_job(
        spec, status=Status.COMPLETED, started_at=now, finished_at=now, cached=True,
        result_chunks=chunks, result_content=content_of(chunks), result_final=final,
        done_reason=str(final.get("done_reason", "stop")),
    )  # fmt: skip
    with queue_lock():
        if spec.idempotency_key:
            existing = selectors.find_by_idempotency_key(owner=spec.owner, key=spec.idempotency_key)
            if existing is not None:
                return existing
        return _insert_once(job, spec) or job


def _insert_once(job: Job, spec: JobSpec) -> Job | None:
    """Insert ``job``; the earlier request when one with the same Idempotency-Key won the race
    (twenty at once once gave 500s). A savepoint keeps PostgreSQL's transaction usable after it;
    without a key there is no race to recover from, and no savepoint (two statements less)."""
    if not spec.idempotency_key:
        job.save(force_insert=True)
        return None
    try:
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        return Job.objects.get(owner=spec.owner, idempotency_key=spec.idempotency_key)
    return None


# --- the worker's side ---------------------------------------------------------------------------


def claim_batch(*, worker: str, allow_partial: bool = True) -> Claim:
    """Claim the next batch of pending jobs for ``worker``, each new generation on a server with
    room (``queueing.policy`` rules 1-4 and 8)."""
    now = timezone.now()
    with queue_lock():
        load = _load()
        free = load.free()
        if free <= 0 and not load.all_out():
            return Claim([])
        size = policy.claim_size()
        by_owner = _candidates(per_owner=size + CANDIDATE_SLACK, now=now)
        if not by_owner:
            return Claim([], retry_in=_next_retry_in(now))
        pending = sum(len(jobs) for jobs in by_owner.values())
        if policy.defer_for_batch(allow_partial=allow_partial, load=load, pending=pending):
            return Claim([], deferred=True)
        _fail_over_quota(by_owner, now)
        _fail_unroutable(by_owner, load, now)
        if free <= 0 or not by_owner:
            return Claim([])
        load.service = _services(list(by_owner), load)
        if len(load.servers) > 1:
            load.affinity = _affinity({j.affinity for jobs in by_owner.values() for j in jobs if j.affinity})
        keys = {job.cache_key for jobs in by_owner.values() for job in jobs}
        running_by_key = _running_by_key(keys) if load.running() else {}
        plan = policy.plan_claim(by_owner, running_by_key, size, load)
        if policy.dedup_enabled() and plan.fresh:
            # Identical pending jobs beyond the candidates share the new generations too.
            taken = [i for g in plan.fresh.values() for i in g.job_ids]
            extra = Job.objects.pending().filter(cache_key__in=list(plan.fresh)).exclude(id__in=taken)
            for job_id, key in extra.order_by("rank").values_list("id", "cache_key"):
                plan.take_identical(job_id, key)
        payloads = dict(
            Job.objects.filter(id__in=[g.job_ids[0] for g in plan.fresh.values()]).values_list(
                "id", "payload"
            )
        )
        lease = policy.lease_until(now)
        for generation in plan.fresh.values():
            generation.payload = payloads[generation.job_ids[0]]
            _start(
                generation.job_ids,
                generation.generation_id,
                worker,
                lease,
                now,
                generation.server,
                first=True,
            )
        leaders = {r.generation_id: r for r in running_by_key.values()}
        for generation_id, job_ids in plan.joins.items():
            leader = leaders[generation_id]
            _start(
                job_ids,
                generation_id,
                leader.worker,
                leader.lease_expires_at,
                now,
                leader.server,
                first=False,
            )
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
    more = plan.considered == size and len(plan.fresh) < free
    return Claim(list(plan.fresh.values()), assigned=assigned, more=more)


def _next_retry_in(now: datetime) -> float | None:
    """Seconds until the first job backing off may run (None: none is)."""
    first = Job.objects.pending().filter(not_before__gt=now).aggregate(first=Min("not_before"))["first"]
    return None if first is None else max(0.0, (first - now).total_seconds())


# How many of each owner's first pending jobs the pick sees beyond a batch (jobs of a model at its
# cap are passed over for the next one).
CANDIDATE_SLACK = 8
MAX_CANDIDATES = 2000

# Each owner's first pending jobs in rank order (a window per owner: one owner's backlog never hides
# another owner's job). SQLite and PostgreSQL both have window functions.
_CANDIDATES_SQL = f"""
SELECT id, owner, model, cache_key, endpoint, priority, rank, created_at, model_cap, affinity, server FROM (
    SELECT id, owner, model, cache_key, endpoint, priority, rank, created_at, model_cap, affinity, server,
           ROW_NUMBER() OVER (PARTITION BY owner ORDER BY rank) AS place
    FROM "{Job._meta.db_table}" WHERE status = %s AND (not_before IS NULL OR not_before <= %s)
) AS heads WHERE place <= %s ORDER BY rank LIMIT %s
"""  # noqa: S608 - the model's own table; values are parameters


def _candidates(*, per_owner: int, now: datetime) -> dict[str, list[policy.Candidate]]:
    by_owner: dict[str, list[policy.Candidate]] = {}
    ready = connection.ops.adapt_datetimefield_value(now)  # a job backing off (rule 6) waits
    with connection.cursor() as cursor:
        cursor.execute(_CANDIDATES_SQL, [Status.PENDING, ready, per_owner, MAX_CANDIDATES])
        for (
            job_id,
            owner,
            model,
            key,
            endpoint,
            priority,
            rank,
            created,
            cap,
            affinity,
            server,
        ) in cursor.fetchall():
            if isinstance(created, str):  # SQLite hands datetimes back as text
                created = datetime.fromisoformat(created)
            by_owner.setdefault(owner, []).append(
                policy.Candidate(
                    id=job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id)),
                    owner=owner,
                    model=model,
                    cache_key=key,
                    endpoint=endpoint,
                    priority=priority,
                    rank=rank,
                    created=created.timestamp(),
                    model_cap=cap,
                    affinity=affinity,
                    last_server=server,
                )
            )
    return by_owner


def _load() -> policy.Load:
    """The servers, and the generations running on each, by owner and model (a generation counted
    once, whoever shares it)."""
    load = policy.Load(
        servers=_server_loads(fleet.views()),
        now=clock.now(),
        expected_cost=selectors.average_generation_ms() / 1000,
    )
    by_name = {s.name: s for s in load.servers}
    rows = (
        Job.objects.running()
        .values("generation_id")
        .annotate(owner=Min("owner"), model=Min("model"), server=Min("server"), started=Min("started_at"))
    )
    for row in rows:
        load.running_by_owner[row["owner"]] += 1
        server = by_name.get(row["server"])
        if server is not None:
            server.start(row["model"])
        started = row["started"].timestamp() if row["started"] else load.now
        load.in_flight[row["owner"]] = load.in_flight.get(row["owner"], 0.0) + max(load.now - started, 0.0)
    return load


def _server_loads(views: list[fleet.View]) -> list[policy.ServerLoad]:
    return [
        policy.ServerLoad(
            v.server, up=v.up, tags=v.tags, loaded=set(v.loaded), last_error=v.last_error, failures=v.failures
        )
        for v in views
    ]


# The server that ran each affinity key's latest attempt (rule 8); the index on (affinity,
# started_at) serves it.
_AFFINITY_SQL = f"""
SELECT affinity, server FROM (
    SELECT affinity, server, ROW_NUMBER() OVER (PARTITION BY affinity ORDER BY started_at DESC) AS place
    FROM "{Job._meta.db_table}" WHERE affinity IN ({{keys}}) AND server <> '' AND started_at IS NOT NULL
) AS latest WHERE place = 1
"""  # noqa: S608 - the model's own table; values are parameters


def _affinity(keys: set[str]) -> dict[str, str]:
    if not keys:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_AFFINITY_SQL.format(keys=", ".join(["%s"] * len(keys))), list(keys))
        return dict(cursor.fetchall())


def _fail_unroutable(by_owner: dict[str, list[policy.Candidate]], load: policy.Load, now: datetime) -> None:
    """Rule 8's refusals: a model no server may serve fails; while every server that may serve it
    is out, an interactive request fails at once (its caller waits) and a queued one waits."""
    verdicts: dict[str, str | None] = {}
    doomed: dict[str, list[uuid.UUID]] = {"not_served": [], "all_out": []}
    for owner, jobs in list(by_owner.items()):
        keep = []
        for job in jobs:
            if job.model not in verdicts:
                verdicts[job.model] = policy.unroutable(job.model, load)
            verdict = verdicts[job.model]
            if verdict is None:
                keep.append(job)
            else:  # not run now; of "all_out" only the interactive ones fail below, queued ones wait
                doomed[verdict].append(job.id)
        by_owner[owner] = keep
        if not keep:
            del by_owner[owner]
    if doomed["not_served"]:
        Job.objects.pending().filter(id__in=doomed["not_served"]).finish(
            status=Status.FAILED, finished_at=now, error_code="model_not_found",
            error_message="No configured Ollama server serves this model.",
        )  # fmt: skip
    if doomed["all_out"]:
        reasons = "; ".join(f"{s.name}: {s.last_error or 'out'}" for s in load.servers if not s.up)[:500]
        Job.objects.pending().filter(id__in=doomed["all_out"], kind=Kind.INTERACTIVE).finish(
            status=Status.FAILED, finished_at=now, error_code="ollama_unavailable",
            error_message=f"Every Ollama server that serves this model is out ({reasons}).",
        )  # fmt: skip


def _services(owners: list[str], load: policy.Load) -> dict[str, float]:
    """Each owner's attained service now: decayed received GPU time, plus what runs for it."""
    stored = dict(
        (owner, policy.decayed(service, updated, load.now))
        for owner, service, updated in OwnerService.objects.filter(owner__in=owners).values_list(
            "owner", "service", "updated"
        )
    )
    return {owner: stored.get(owner, 0.0) + load.in_flight.get(owner, 0.0) for owner in owners}


def _fail_over_quota(by_owner: dict[str, list[policy.Candidate]], now: datetime) -> None:
    """An owner whose quota ran out since its jobs were accepted: they fail, and are not run."""
    for owner in list(by_owner):
        rules = rules_for(owner)
        if not rules.has_quota:
            continue
        error = quota_error(owner, rules)
        if error is None:
            continue
        Job.objects.pending().filter(owner=owner).finish(
            status=Status.FAILED, finished_at=now, error_code=error.code, error_message=error.message
        )
        del by_owner[owner]


def quota_error(owner: str, rules: OwnerRules) -> QuotaExceeded | None:
    """QuotaExceeded (with Retry-After at the window's end) when ``owner`` used up a quota."""
    found = usage.exhausted(owner=owner, quotas=rules.quotas)
    if found is None:
        return None
    unit, window, ends = found
    retry = max(1, math.ceil((ends - clock.utcnow()).total_seconds()))
    words = "tokens" if unit == "tokens" else "GPU seconds"
    return QuotaExceeded(
        f"The {words} quota of this {window} is used up; it renews at {ends.isoformat()}.", retry_after=retry
    )


def _running_by_key(keys: set[str]) -> dict[str, policy.Running]:
    if not policy.dedup_enabled():
        return {}
    found: dict[str, policy.Running] = {}
    rows = Job.objects.running().filter(cache_key__in=keys)
    for job in rows.only("cache_key", "generation_id", "lease_owner", "lease_expires_at", "server"):
        assert job.generation_id is not None  # running() rows have one
        found.setdefault(
            job.cache_key,
            policy.Running(job.generation_id, job.lease_owner, job.lease_expires_at, job.server),
        )
    return found


def _start(
    job_ids: list[uuid.UUID],
    generation_id: uuid.UUID,
    worker: str,
    lease: datetime | None,
    now: datetime,
    server: str,
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
            server=server,
            attempts=F("attempts") + 1,
            deduplicated=not first,
            result_chunks=None,  # an earlier attempt's partial output (checkpoint_generation)
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
    *,
    worker: str,
    generation_id: uuid.UUID,
    chunks: list[Chunk],
    final: dict[str, Any],
    wall_seconds: float = 0.0,
    server: str = "",
) -> list[Job]:
    """Write the result to every live job of the generation, if ``worker`` still holds its lease,
    and charge its cost once, to the owner whose request started it. ``server`` answered: its
    failures are forgotten (rule 8's breaker)."""
    now = timezone.now()
    with queue_lock():
        if server:
            fleet.record_success(server)
        live = Job.objects.in_generation(generation_id).filter(lease_owner=worker)
        jobs = list(
            live.only("id", "use_cache", "owner", "model", "created_at", "history").order_by("created_at")
        )
        if jobs:
            _charge(jobs[0].owner, jobs[0].model, usage.Cost.of(final, wall_seconds))
        Job.objects.filter(id__in=[j.id for j in jobs], status=Status.PROCESSING).finish(
            status=Status.COMPLETED,
            finished_at=now,
            result_chunks=chunks,
            result_content=content_of(chunks),
            result_final=final,
            done_reason=str(final.get("done_reason", "")),
        )
        retention.trim_history([j.id for j in jobs if j.history])
        if jobs:
            counters.record({counters.GENERATIONS: 1})  # the completions: Job.objects.finish
    return jobs


_SERVICE = OwnerService._meta.db_table
_SERVICE_READ = f'SELECT "service", "updated" FROM "{_SERVICE}" WHERE "owner" = %s'  # noqa: S608 - the model's table
_SERVICE_WRITE = (
    f'INSERT INTO "{_SERVICE}" ("owner", "service", "updated") VALUES (%s, %s, %s) '  # noqa: S608 - the model's table; values are parameters
    'ON CONFLICT ("owner") DO UPDATE SET "service" = excluded."service", "updated" = excluded."updated"'
)


def _charge(owner: str, model: str, cost: usage.Cost) -> None:
    """Add a generation's GPU time to the owner's attained service, and its usage: two statements
    (the ORM's read and update_or_create took six, with a savepoint, at every finish). The read
    and the write are safe together: finishes run under the queue lock."""
    now = clock.now()
    with connection.cursor() as cursor:
        cursor.execute(_SERVICE_READ, [owner])
        row = cursor.fetchone()
        service = policy.decayed(float(row[0]), float(row[1]), now) if row is not None else 0.0
        cursor.execute(_SERVICE_WRITE, [owner, service + cost.gpu_seconds, now])
    usage.charge(owner=owner, model=model, cost=cost)


def checkpoint_generation(*, worker: str, generation_id: uuid.UUID, chunks: list[Chunk]) -> int:
    """Write the chunks a running generation produced so far to its jobs, for listeners that cannot
    hear its channel messages (the channel layer is down): they re-read their rows every second.
    Only the lease holder writes, and only while the jobs run; ``finish_generation`` writes the
    whole record over it, and a new attempt starts without it."""
    return Job.objects.in_generation(generation_id).filter(lease_owner=worker).update(result_chunks=chunks)


def fail_generation(
    *, worker: str, generation_id: uuid.UUID, error: ApiError, server: str = "", sent: bool = True
) -> dict[str, int]:
    """Fail the generation's live jobs, or put them back for another attempt (rule 6): queued ones
    while they have attempts left; interactive ones too when nothing was ``sent`` to their callers
    yet and the fault was the server's, so another server can answer them (rule 8). A server fault
    counts towards taking ``server`` out."""
    now = timezone.now()
    with queue_lock():
        live = Job.objects.in_generation(generation_id).filter(lease_owner=worker)
        fault = is_server_fault(error)
        if server and fault:
            fleet.record_failure(server, error, now)
        retry = 0
        if policy.retryable(error.code):
            elsewhere = False  # another server that is in may serve every model of it
            if fault and server:
                models = set(live.values_list("model", flat=True))
                load = policy.Load(servers=_server_loads(fleet.views()))
                elsewhere = all(policy.another_server_for(m, server, load) for m in models)
            again = Q(kind=Kind.QUEUED)
            if elsewhere and not sent:
                again |= Q(kind=Kind.INTERACTIVE)
            retry = _retry(live.filter(again), error, now, back_off=not elsewhere)
        failed = live.finish(
            status=Status.FAILED, finished_at=now, error_code=error.code, error_message=error.message
        )
    if retry:
        logger.info(
            "generation %s failed on %s (%s): %d jobs go back to the queue",
            generation_id,
            server,
            error.code,
            retry,
        )
    return {"retried": retry, "failed": failed}


def _retry(jobs: JobQuerySet, error: ApiError, now: datetime, *, back_off: bool) -> int:
    """Put ``jobs`` back to pending for another attempt (rule 6): queued ones within their retry
    window, after a back-off unless another server can take them, with the attempt given back when
    Ollama was only not there or not ready; interactive ones (another server, nothing sent yet) at
    once."""
    interactive = jobs.filter(kind=Kind.INTERACTIVE, attempts__lt=policy.max_attempts())
    retried = interactive.update(**_back_to_pending())
    queued = jobs.filter(kind=Kind.QUEUED).filter(Q(retry_until__isnull=True) | Q(retry_until__gt=now))
    fields: dict[str, Any] = {}
    if policy.costs_attempt(error.code):
        queued = queued.filter(attempts__lt=policy.max_attempts())
    else:
        fields["attempts"] = F("attempts") - 1
    # One back-off per generation: its jobs failed together, and share a window when they share one.
    until = queued.aggregate(first=Min("retry_until"))["first"]
    window = until or policy.retry_window_end(now)
    fields["retry_until"] = Coalesce("retry_until", Value(window))
    if back_off:
        fields["not_before"] = policy.retry_at(now, window)
    retried += queued.update(**{**_back_to_pending(), **fields})
    return retried


def _back_to_pending() -> dict[str, Any]:
    return {
        "status": Status.PENDING,
        "generation_id": None,
        "lease_owner": "",
        "lease_expires_at": None,
        "started_at": None,
        "not_before": None,
    }


# --- heartbeats (rule 5) --------------------------------------------------------------------------

HOST = socket.gethostname()
_here: set[str] = set()  # the workers running in this process


def beat(*, worker: str) -> None:
    """``worker`` is alive: it runs in this process, on this host."""
    _here.add(worker)
    WorkerBeat.objects.update_or_create(
        name=worker, defaults={"seen_at": timezone.now(), "host": HOST, "pid": os.getpid()}
    )


def _gone_workers(now: datetime, worker: str) -> list[str]:
    """The workers that are gone (rule 5). Judged only by a worker whose own beat is fresh: after a
    stall that held every worker back (a frozen database), the others get a beat's time too."""
    beats = list(WorkerBeat.objects.values_list("name", "seen_at", "host", "pid"))
    stale = policy.beat_stale_before(now)
    mine = next((seen for name, seen, _, _ in beats if name == worker), None)
    judge_silence = mine is not None and mine >= stale
    return [
        name
        for name, seen, host, pid in beats
        if name != worker
        and (
            (judge_silence and seen < stale) or policy.process_gone(host, pid, HOST, runs_here=name in _here)
        )
    ]


def expire_leases(*, worker: str = "") -> dict[str, int]:
    """Recover jobs whose worker is gone or whose lease lapsed (rules 5-7), and cancel pending
    interactive jobs whose caller stopped waiting. Workers run it every poll."""
    now = timezone.now()
    with queue_lock():
        _drop_abandoned(now)
        gone = _gone_workers(now, worker)
        lost = Job.objects.lapsed(now) | Job.objects.filter(status=Status.PROCESSING, lease_owner__in=gone)
        outcome = _recover(lost, now, reason="its worker was lost") if lost.exists() else {}
        if gone:
            WorkerBeat.objects.filter(name__in=gone).delete()
    if outcome:
        logger.warning("recovered the jobs of lost workers %s: %s", gone or "(lease lapsed)", outcome)
    return outcome


def _drop_abandoned(now: datetime) -> None:
    """Cancel pending interactive jobs whose caller stopped waiting (its process died)."""
    Job.objects.pending().filter(
        kind=Kind.INTERACTIVE, caller_seen_at__lt=policy.caller_alive_since(now)
    ).finish(
        status=Status.CANCELLED,
        finished_at=now,
        error_code="caller_gone",
        error_message="The caller stopped waiting before the request ran.",
    )


def release_worker(*, worker: str) -> dict[str, int]:
    """On a clean shutdown, hand ``worker``'s jobs back at once instead of waiting for the lease."""
    now = timezone.now()
    with queue_lock():
        held = Job.objects.held_by(worker)
        # Not the job's fault: the attempt does not count.
        held.filter(attempts__gt=0).update(attempts=F("attempts") - 1)
        outcome = _recover(held, now, reason="its worker shut down")
        WorkerBeat.objects.filter(name=worker).delete()
    _here.discard(worker)
    return outcome


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
    return Cancelled(job, stop_generation=stop, stop_worker=worker if stop else "")
