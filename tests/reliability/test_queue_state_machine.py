"""A hypothesis state machine over the queue's transitions: enqueue, claim, renew, lapse and expire,
complete (also by a worker whose lease lapsed), fail, cancel. Invariants: no accepted request is lost,
a finished request never changes again, a generation never has two owners, and never more than
max_concurrent generations run."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from core.errors import ApiError, OllamaModelNotFound, OllamaUnavailable
from queueing import transitions
from queueing.models import TERMINAL, Job, Kind, Status
from queueing.spec import JobSpec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_workers")]
WORKERS = st.sampled_from(["w1", "w2", "w3"])


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        Job.objects.all().delete()
        # Lists in insertion order, picked by index: the ids are random, so drawing from them
        # directly would make the data generation differ between hypothesis' runs.
        self.accepted: list[uuid.UUID] = []
        self.finished: dict[uuid.UUID, tuple[str, str]] = {}
        self.held: dict[str, list[uuid.UUID]] = {"w1": [], "w2": [], "w3": []}

    @rule(text=st.sampled_from(["a", "b", "c", "d"]), interactive=st.booleans(), priority=st.integers(-2, 2))
    def enqueue(self, text: str, interactive: bool, priority: int) -> None:
        try:
            spec = JobSpec(
                kind=Kind.INTERACTIVE if interactive else Kind.QUEUED,
                endpoint="chat",
                model="m",
                payload={"messages": [{"role": "user", "content": text}]},
                cache_key=f"v1:{text}",
                priority=priority,
            )
            job = transitions.enqueue_request(spec).job
        except ApiError:
            return
        self.accepted.append(job.id)
        if job.generation_id is not None and job.generation_id not in self.held[job.lease_owner]:
            self.held[job.lease_owner].append(job.generation_id)

    @rule(worker=WORKERS, partial=st.booleans())
    def claim(self, worker: str, partial: bool) -> None:
        for generation in transitions.claim_batch(worker=worker, allow_partial=partial).generations:
            self.held[worker].append(generation.generation_id)

    @rule(worker=WORKERS)
    def renew(self, worker: str) -> None:
        transitions.renew_leases(worker=worker)

    @rule(worker=WORKERS)
    def worker_dies(self, worker: str) -> None:
        # Its leases lapse; it keeps its memory, so it may still try to finish later (stale).
        Job.objects.filter(lease_owner=worker, status=Status.PROCESSING).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        transitions.expire_leases()

    @rule(worker=WORKERS, index=st.integers(0, 50))
    def complete(self, worker: str, index: int) -> None:
        if self.held[worker]:
            generation = self.held[worker][index % len(self.held[worker])]
            # A result naming its writer: an overwrite by anyone else would show.
            chunks = [{"content": f"{worker}:{generation.hex[:8]}"}]
            transitions.finish_generation(worker=worker, generation_id=generation, chunks=chunks, final={})
            self.held[worker].remove(generation)

    @rule(worker=WORKERS, index=st.integers(0, 50), retryable=st.booleans())
    def fail(self, worker: str, index: int, retryable: bool) -> None:
        if self.held[worker]:
            generation = self.held[worker][index % len(self.held[worker])]
            # A retryable code (the queue retries it) or one that is not (a missing model).
            error = OllamaUnavailable("down") if retryable else OllamaModelNotFound("no such model")
            transitions.fail_generation(worker=worker, generation_id=generation, error=error)
            self.held[worker].remove(generation)

    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        if self.accepted:
            job_id = self.accepted[index % len(self.accepted)]
            try:
                transitions.cancel_request(job_id=job_id)
            except ApiError:
                pass

    @invariant()
    def nothing_lost_and_finished_stays_finished(self) -> None:
        rows = dict(Job.objects.values_list("id", "status"))
        assert set(self.accepted) <= set(rows), f"lost: {set(self.accepted) - set(rows)}"
        results = {j.id: (j.status, j.result_content) for j in Job.objects.filter(status__in=TERMINAL)}
        for job_id, before in self.finished.items():
            assert results.get(job_id) == before, (
                f"{job_id} changed after finishing: {before} -> {results.get(job_id)}"
            )
        self.finished.update(results)

    @invariant()
    def one_owner_per_generation_and_within_the_limit(self) -> None:
        owners: dict[uuid.UUID, set[str]] = {}
        for generation, owner in Job.objects.filter(status=Status.PROCESSING).values_list(
            "generation_id", "lease_owner"
        ):
            owners.setdefault(generation, set()).add(owner)
        assert all(len(o) == 1 for o in owners.values()), f"two owners: {owners}"
        assert len(owners) <= 2, f"{len(owners)} generations running with max_concurrent 2"


def test_queue_state_machine(settings):
    settings.QUEUE_MAX_CONCURRENT = 2
    settings.QUEUE_MAX_QUEUE_SIZE = 6
    settings.QUEUE_MAX_ATTEMPTS = 2
    settings.BATCH_MAX_BATCH_SIZE = 2
    run_state_machine_as_test(
        QueueMachine,
        settings=hsettings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
