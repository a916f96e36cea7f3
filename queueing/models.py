"""The queue table: one row per request. The row is the truth; channel messages only wake people up."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db import models

from stats import counters


class Kind(models.TextChoices):
    INTERACTIVE = "interactive", "interactive"  # a chat-optimized caller waits on the connection
    QUEUED = "queued", "queued"  # submitted to /api/chat-queue, fetched or streamed later


class Status(models.TextChoices):
    PENDING = "pending", "pending"
    PROCESSING = "processing", "processing"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE = (Status.PENDING, Status.PROCESSING)
TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


# The counter of each terminal state: completions by a generation (cache hits complete rows too, and
# are counted as hits), failures, cancellations.
FINISHED_COUNTERS = {
    "completed": counters.COMPLETED,
    "failed": counters.FAILED,
    "cancelled": counters.CANCELLED,
}


class JobQuerySet(models.QuerySet["Job"]):
    """The queue's states, named once (the transitions and reads combine them)."""

    def pending(self) -> JobQuerySet:
        return self.filter(status=Status.PENDING)

    def processing(self) -> JobQuerySet:
        return self.filter(status=Status.PROCESSING)

    def running(self) -> JobQuerySet:
        """Processing jobs attached to a generation."""
        return self.filter(status=Status.PROCESSING, generation_id__isnull=False)

    def held_by(self, worker: str) -> JobQuerySet:
        return self.filter(status=Status.PROCESSING, lease_owner=worker)

    def in_generation(self, generation_id: uuid.UUID) -> JobQuerySet:
        return self.filter(generation_id=generation_id, status=Status.PROCESSING)

    def lapsed(self, now: datetime) -> JobQuerySet:
        return self.filter(status=Status.PROCESSING, lease_expires_at__lt=now)

    def running_generations(self) -> int:
        """Generations in flight across the deployment."""
        return self.running().values("generation_id").distinct().count()

    def finish(self, **fields: Any) -> int:
        """Move these rows to a terminal state, counting them (``stats.counters``) in the same
        transaction, so the figures match the rows whenever a process dies; returns how many moved."""
        moved = self.update(lease_expires_at=None, **fields)
        if moved:
            counters.record({FINISHED_COUNTERS[fields["status"]]: moved})
        return moved


class Job(models.Model):
    """A request for one generation, from submission to its result.

    Jobs with the same ``cache_key`` that run together share one upstream generation: they carry the
    same ``generation_id`` and lease while processing, and all get the same result.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    priority = models.IntegerField(default=0, help_text="Higher runs first.")
    # Order of service: created time minus priority x aging seconds, fixed at submission (so an
    # index serves it). Lower ranks run first; FIFO within a priority.
    rank = models.FloatField()

    endpoint = models.CharField(max_length=16, default="chat")  # "chat" or "generate"
    model = models.CharField(max_length=200)
    payload = models.JSONField(help_text="What is sent to Ollama, minus `stream`.")
    cache_key = models.CharField(max_length=80, db_index=True)
    use_cache = models.BooleanField(default=True)
    owner = models.CharField(max_length=200, blank=True, default="")
    # Generations of this model allowed at once (0: no cap of its own), fixed at submission from the
    # model's facts and [models."<name>"] max_concurrent.
    model_cap = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # A hash of the conversation's leading messages: its follow-up turns go back to the server that
    # served it last (that server's prompt cache holds the prefix). "" for embeddings.
    affinity = models.CharField(max_length=32, blank=True, default="")
    # How many leading messages of payload["messages"] are the conversation's stored history
    # (chat-optimized turns). The conversation store holds them once; a finished row drops them
    # (retention.trim_history), so N turns do not keep N copies of a growing history.
    history = models.PositiveIntegerField(default=0)
    # The Ollama server of the current (or last) attempt; a retry prefers another one.
    server = models.CharField(max_length=64, blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Interactive callers refresh this while they wait; a job whose caller stopped is not run.
    caller_seen_at = models.DateTimeField(null=True, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    # A retried job is not claimed before this (back-off with jitter), and is not retried after
    # retry_until (the retry window opened by its first retryable failure).
    not_before = models.DateTimeField(null=True, blank=True)
    retry_until = models.DateTimeField(null=True, blank=True)
    generation_id = models.UUIDField(null=True, blank=True, db_index=True)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    result_content = models.TextField(blank=True, default="")
    result_chunks = models.JSONField(null=True, blank=True)
    result_final = models.JSONField(null=True, blank=True, help_text="Ollama's final chunk: metrics.")
    done_reason = models.CharField(max_length=32, blank=True, default="")
    cached = models.BooleanField(default=False, help_text="Answered from the response cache.")
    deduplicated = models.BooleanField(default=False, help_text="Shared another job's generation.")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    objects = JobQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["status", "rank"], name="job_claim_idx"),
            models.Index(fields=["status", "created_at"], name="job_list_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="job_lease_idx"),
            models.Index(fields=["status", "owner", "rank"], name="job_owner_idx"),
            models.Index(fields=["affinity", "started_at"], name="job_affinity_idx"),
            models.Index(fields=["status", "finished_at"], name="job_finished_idx"),
            models.Index(fields=["status"], name="job_history_idx", condition=models.Q(history__gt=0)),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="job_idempotency_unique",
            )
        ]
        ordering = ["rank"]

    def __str__(self) -> str:
        return f"{self.id} ({self.kind}, {self.status})"


class OwnerService(models.Model):
    """An owner's attained service: the GPU seconds it received, decayed with a half-life
    ([fairness] half_life_seconds). The fair-share pick serves the owner with the least, weighted.
    ``service`` is the value at ``updated`` (epoch seconds); read it through ``decayed``."""

    owner = models.CharField(max_length=200, primary_key=True)
    service = models.FloatField(default=0.0)
    updated = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"{self.owner or 'anonymous'}: {self.service:.2f} s"


class WorkerBeat(models.Model):
    """A live worker: it refreshes ``seen_at`` every ``[queue] heartbeat_seconds``. The jobs of a
    worker whose beat stopped for three beats, or whose process on this host is gone, are recovered
    at once (``queueing.policy`` rule 5), not after their lease lapses."""

    name = models.CharField(max_length=200, primary_key=True)
    seen_at = models.DateTimeField()
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} (seen {self.seen_at:%H:%M:%S})"


class ServerState(models.Model):
    """What the deployment knows of one Ollama server, shared by every process: whether it is in,
    its consecutive failures (the circuit breaker of ``queueing.fleet``), and what its last probe
    saw. Routing reads these rows at each claim."""

    class State(models.TextChoices):
        UP = "up", "up"
        OUT = "out", "out"  # taken out after failure_threshold failures; probed again at retry_at

    name = models.CharField(max_length=64, primary_key=True)
    url = models.CharField(max_length=500, blank=True, default="")
    state = models.CharField(max_length=8, choices=State.choices, default=State.UP)
    failures = models.PositiveIntegerField(default=0, help_text="Consecutive failures.")
    out_since = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True)
    backoff_seconds = models.FloatField(default=0.0)
    last_error = models.CharField(max_length=300, blank=True, default="")
    version = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(null=True, blank=True, help_text="Model names from /api/tags (null: not probed).")
    loaded = models.JSONField(default=list, blank=True, help_text="Names from /api/ps.")
    probed_at = models.DateTimeField(null=True, blank=True)
    # The probe lease: the process that moves it forward probes; the others wait for its answer.
    next_probe_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"
