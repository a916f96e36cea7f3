"""Queue transitions against the real test database (no server): claiming, dedup, leases, cancel."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Conflict, NotFound, OllamaBadResponse, OllamaUnavailable, TooManyRequests
from queueing import policy, selectors, transitions
from queueing.models import Job, Kind, Status, WorkerBeat
from queueing.spec import JobSpec
from stats import counters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_workers")]


def enqueue(text: str, *, kind: str = Kind.QUEUED, priority: int = 0, key: str | None = None, **kw):
    spec = JobSpec(
        kind=kind,
        endpoint="chat",
        model="llama3.2:1b",
        payload={"model": "llama3.2:1b", "messages": [{"role": "user", "content": text}]},
        cache_key=key or f"v1:{text}",
        priority=priority,
        **kw,
    )
    return transitions.enqueue_request(spec).job


def test_claim_never_exceeds_max_concurrent_across_workers(settings):
    settings.QUEUE_MAX_CONCURRENT = 2
    for i in range(5):
        enqueue(f"q{i}")
    first = transitions.claim_batch(worker="w1")
    second = transitions.claim_batch(worker="w2")
    assert len(first.generations) == 2 and second.generations == []
    assert Job.objects.running_generations() == 2
    assert Job.objects.filter(status=Status.PENDING).count() == 3


def test_identical_pending_jobs_share_one_generation(settings):
    settings.BATCH_MAX_BATCH_SIZE = 2
    ids = [enqueue("same").id for _ in range(5)]
    claim = transitions.claim_batch(worker="w1")
    assert len(claim.generations) == 1
    assert sorted(claim.generations[0].job_ids) == sorted(ids)  # beyond the batch size too
    jobs = Job.objects.filter(id__in=ids)
    assert {j.generation_id for j in jobs} == {claim.generations[0].generation_id}
    assert sorted(j.deduplicated for j in jobs) == [False, True, True, True, True]
    assert counters.read([counters.DEDUPLICATED])[counters.DEDUPLICATED] == 4


def test_a_request_identical_to_a_running_one_joins_it_at_once():
    leader = enqueue("same")
    claim = transitions.claim_batch(worker="w1")
    follower = enqueue("same")
    assert follower.status == Status.PROCESSING
    assert follower.generation_id == claim.generations[0].generation_id
    assert follower.lease_owner == "w1"
    transitions.finish_generation(
        worker="w1",
        generation_id=follower.generation_id,
        chunks=[{"content": "a"}, {"content": "b"}],
        final={"done_reason": "stop"},
    )
    for job in (leader, follower):
        job.refresh_from_db()
        assert (job.status, job.result_content) == (Status.COMPLETED, "ab")


def test_without_deduplication_identical_jobs_run_separately(settings):
    settings.BATCH_ENABLE_DEDUPLICATION = False
    settings.QUEUE_MAX_CONCURRENT = 3
    enqueue("same")
    enqueue("same")
    assert len(transitions.claim_batch(worker="w1").generations) == 2


def test_priority_first_then_fifo(settings):
    settings.QUEUE_PRIORITY_AGING_SECONDS = 3600
    low1 = enqueue("low1", priority=0)
    low2 = enqueue("low2", priority=0)
    high = enqueue("high", priority=5)
    order = []
    for _ in range(3):
        claim = transitions.claim_batch(worker="w")
        order.append(claim.generations[0].job_ids[0])
        transitions.finish_generation(
            worker="w", generation_id=claim.generations[0].generation_id, chunks=[], final={}
        )
    assert order == [high.id, low1.id, low2.id]
    assert selectors.queue_position(Job.objects.get(id=low1.id)) == 0


def test_ageing_bounds_how_long_a_low_priority_request_waits(settings):
    settings.QUEUE_PRIORITY_AGING_SECONDS = 10
    low = enqueue("low", priority=0)
    # A high-priority request 25 s later ranks after it: 2 steps of priority are worth 20 s of waiting.
    Job.objects.filter(id=low.id).update(rank=low.rank - 25)
    high = enqueue("high", priority=2)
    assert selectors.queue_position(Job.objects.get(id=low.id)) == 1
    assert selectors.queue_position(Job.objects.get(id=high.id)) == 2


def test_a_fuller_batch_is_awaited_only_while_other_generations_run(settings):
    settings.QUEUE_MAX_CONCURRENT = 2
    settings.BATCH_MAX_BATCH_SIZE = 3
    enqueue("a")
    # Ollama idle: never held back.
    assert transitions.claim_batch(worker="w", allow_partial=False).jobs == 1
    enqueue("b")
    deferred = transitions.claim_batch(worker="w", allow_partial=False)
    assert deferred.deferred and deferred.jobs == 0
    assert transitions.claim_batch(worker="w", allow_partial=True).jobs == 1


def test_queue_full_rejects_and_stores_nothing(settings):
    settings.QUEUE_MAX_QUEUE_SIZE = 2
    enqueue("a")
    enqueue("b")
    with pytest.raises(TooManyRequests) as exc:
        enqueue("c")
    assert exc.value.status == 429 and exc.value.retry_after >= 1
    assert Job.objects.count() == 2


def test_idempotency_key_returns_the_same_request():
    spec = JobSpec(
        kind=Kind.QUEUED, endpoint="chat", model="m", payload={}, cache_key="k", idempotency_key="abc"
    )
    first = transitions.enqueue_request(spec)
    again = transitions.enqueue_request(spec)
    assert again.job.id == first.job.id and again.created is False
    assert Job.objects.count() == 1


def test_only_the_lease_holder_writes_the_result():
    job = enqueue("x")
    generation = transitions.claim_batch(worker="w1").generations[0]
    assert (
        transitions.finish_generation(
            worker="w2", generation_id=generation.generation_id, chunks=[{"content": "no"}], final={}
        )
        == []
    )
    job.refresh_from_db()
    assert job.status == Status.PROCESSING and job.result_content == ""


def test_lapsed_lease_requeues_then_fails_after_max_attempts(settings):
    settings.QUEUE_MAX_ATTEMPTS = 2
    job = enqueue("x")
    for attempt in (1, 2):
        transitions.claim_batch(worker=f"w{attempt}")
        Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        outcome = transitions.expire_leases()
        job.refresh_from_db()
        assert job.attempts == attempt
    assert outcome == {"failed": 1}
    assert job.status == Status.FAILED and job.error_code == "worker_lost"


def test_lapsed_interactive_job_is_rerun_only_if_its_caller_still_waits(settings):
    settings.QUEUE_MAX_CONCURRENT = 2
    waiting = enqueue("a", kind=Kind.INTERACTIVE)
    gone = enqueue("b", kind=Kind.INTERACTIVE)
    assert transitions.claim_batch(worker="w").jobs == 2
    Job.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    Job.objects.filter(id=gone.id).update(caller_seen_at=timezone.now() - timedelta(hours=1))
    transitions.expire_leases()
    assert Job.objects.get(id=waiting.id).status == Status.PENDING
    assert Job.objects.get(id=gone.id).status == Status.CANCELLED


def test_retryable_failure_requeues_queued_but_fails_interactive():
    queued = enqueue("same")
    interactive = enqueue("same", kind=Kind.INTERACTIVE)
    generation = transitions.claim_batch(worker="w").generations[0]
    assert len(generation.job_ids) == 2
    outcome = transitions.fail_generation(
        worker="w", generation_id=generation.generation_id, error=OllamaUnavailable("down")
    )
    assert outcome == {"retried": 1, "failed": 1}
    assert Job.objects.get(id=queued.id).status == Status.PENDING
    failed = Job.objects.get(id=interactive.id)
    assert (failed.status, failed.error_code) == (Status.FAILED, "ollama_unavailable")


def test_cancel_stops_the_generation_only_when_no_job_is_left_in_it():
    a = enqueue("same")
    b = enqueue("same")
    transitions.claim_batch(worker="w")
    first = transitions.cancel_request(job_id=a.id)
    assert first.stop_generation is None  # b still wants it
    second = transitions.cancel_request(job_id=b.id)
    assert second.stop_generation is not None and second.stop_worker == "w"
    with pytest.raises(Conflict):
        transitions.cancel_request(job_id=a.id)
    with pytest.raises(NotFound):
        transitions.cancel_request(job_id=uuid.uuid4())


def test_another_owner_sees_not_found():
    job = enqueue("mine", owner="alice")
    with pytest.raises(NotFound):
        selectors.get_request(job_id=job.id, owner="bob")
    with pytest.raises(NotFound):
        transitions.cancel_request(job_id=job.id, owner="bob")
    assert selectors.get_request(job_id=job.id, owner="alice").id == job.id


def test_release_hands_jobs_back_without_charging_an_attempt():
    job = enqueue("x")
    transitions.claim_batch(worker="w")
    assert transitions.release_worker(worker="w") == {"requeued": 1}
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_owner) == (Status.PENDING, 0, "")


# --- retries with back-off (rule 6) and heartbeats (rule 5) --------------------------------------


def _ready(job: Job) -> None:
    """The back-off is over (the clock moved on)."""
    Job.objects.filter(id=job.id).update(not_before=timezone.now() - timedelta(milliseconds=1))


def _fail(error, worker: str = "w") -> dict[str, int]:
    generation = transitions.claim_batch(worker=worker).generations[0]
    return transitions.fail_generation(worker=worker, generation_id=generation.generation_id, error=error)


def test_a_retried_request_waits_its_back_off_before_it_is_claimed_again(settings):
    settings.QUEUE_RETRY_BASE_SECONDS = 1.0
    job = enqueue("x")
    before = timezone.now()
    assert _fail(OllamaBadResponse("cut")) == {"retried": 1, "failed": 0}
    job.refresh_from_db()
    assert job.status == Status.PENDING and job.attempts == 1
    wait = (job.not_before - before).total_seconds()
    assert 0.75 <= wait <= 1.25 + 0.5  # the base, with jitter
    assert abs((job.retry_until - before).total_seconds() - settings.QUEUE_RETRY_WINDOW_SECONDS) < 1
    assert transitions.claim_batch(worker="w").generations == []  # backing off
    _ready(job)
    assert transitions.claim_batch(worker="w").jobs == 1


def test_the_back_off_doubles_with_how_long_the_request_has_been_failing(settings):
    settings.QUEUE_RETRY_BASE_SECONDS, settings.QUEUE_RETRY_MAX_SECONDS = 1.0, 15.0
    now = timezone.now()
    window = timedelta(seconds=settings.QUEUE_RETRY_WINDOW_SECONDS)
    for failing, expected in ((0, 1.0), (4, 4.0), (8, 8.0), (100, 15.0)):
        waits = [(policy.retry_at(now, now - timedelta(seconds=failing) + window) - now).total_seconds()]
        waits += [(policy.retry_at(now, now - timedelta(seconds=failing) + window) - now).total_seconds()]
        assert all(0.75 * expected <= w <= 1.25 * expected for w in waits), (failing, waits)


def test_an_unreachable_ollama_costs_no_attempt_until_the_retry_window_closes(settings):
    settings.QUEUE_MAX_ATTEMPTS = 2
    job = enqueue("x")
    for _ in range(6):  # an Ollama restart: refused, refused, ... never a spent attempt
        assert _fail(OllamaUnavailable("refused")) == {"retried": 1, "failed": 0}
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Status.PENDING, 0)
        _ready(job)
    Job.objects.filter(id=job.id).update(retry_until=timezone.now() - timedelta(seconds=1))
    assert _fail(OllamaUnavailable("refused")) == {"retried": 0, "failed": 1}
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, "ollama_unavailable")


def test_other_failures_spend_attempts(settings):
    settings.QUEUE_MAX_ATTEMPTS = 2
    job = enqueue("x")
    assert _fail(OllamaBadResponse("cut")) == {"retried": 1, "failed": 0}
    _ready(job)
    assert _fail(OllamaBadResponse("cut")) == {"retried": 0, "failed": 1}


def test_a_silent_workers_jobs_are_taken_after_three_beats_not_after_the_lease(settings):
    settings.QUEUE_HEARTBEAT_SECONDS, settings.QUEUE_LEASE_SECONDS = 1.0, 600.0
    job = enqueue("x")
    transitions.beat(worker="w1")
    transitions.claim_batch(worker="w1")
    transitions.beat(worker="w2")
    assert transitions.expire_leases(worker="w2") == {}  # w1 beats: its job stays
    WorkerBeat.objects.filter(name="w1").update(seen_at=timezone.now() - timedelta(seconds=2))
    assert transitions.expire_leases(worker="w2") == {}  # two beats missed: not yet
    WorkerBeat.objects.filter(name="w1").update(seen_at=timezone.now() - timedelta(seconds=3.5))
    assert transitions.expire_leases(worker="w2") == {"requeued": 1}
    job.refresh_from_db()
    assert (job.status, job.lease_owner) == (Status.PENDING, "")
    assert not WorkerBeat.objects.filter(name="w1").exists()


def test_after_a_stall_that_held_every_worker_nobody_takes_the_others_jobs(settings):
    settings.QUEUE_HEARTBEAT_SECONDS, settings.QUEUE_LEASE_SECONDS = 1.0, 600.0
    enqueue("x")
    transitions.beat(worker="w1")
    transitions.beat(worker="w2")
    transitions.claim_batch(worker="w1")
    WorkerBeat.objects.update(seen_at=timezone.now() - timedelta(seconds=10))  # a frozen database
    assert transitions.expire_leases(worker="w2") == {}  # w2 was held too: w1 gets a beat's time
    transitions.beat(worker="w2")
    assert transitions.expire_leases(worker="w2") == {"requeued": 1}  # w1 still silent


def test_a_dead_predecessor_on_this_host_is_known_at_once(settings):
    settings.QUEUE_LEASE_SECONDS = 600.0
    job = enqueue("x")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    WorkerBeat.objects.create(name="killed", seen_at=timezone.now(), host=transitions.HOST, pid=dead.pid)
    transitions.claim_batch(worker="killed")
    transitions.beat(worker="new")
    assert transitions.expire_leases(worker="new") == {"requeued": 1}  # its beat is fresh: no wait
    job.refresh_from_db()
    assert job.status == Status.PENDING


@pytest.mark.django_db(transaction=True)
def test_the_same_idempotency_key_sent_twenty_times_at_once_is_one_request():
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def submit(i: int) -> str:
        try:
            spec = JobSpec(kind=Kind.QUEUED, endpoint="chat", model="llama3.2:1b",
                           payload={"model": "llama3.2:1b", "messages": []}, cache_key="v1:same",
                           idempotency_key="retry-me")  # fmt: skip
            if i % 2:  # half as answered from the cache, half queued: both paths race
                return str(transitions.complete_from_cache(spec, {"chunks": [], "final": {}}).id)
            return str(transitions.enqueue_request(spec).job.id)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 1 and Job.objects.count() == 1, ids
