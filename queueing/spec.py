"""The values the queue passes around: what a request asks for, and what a claim hands a worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from queueing.models import Kind


@dataclass(frozen=True)
class JobSpec:
    """One request for a generation, as every surface hands it to the queue."""

    kind: str  # Kind.INTERACTIVE (a caller waits on the connection) or Kind.QUEUED
    endpoint: str  # Ollama's endpoint: "chat" or "generate"
    model: str
    payload: dict[str, Any]  # what is sent to Ollama, minus ``stream``
    cache_key: str  # identical requests share it (dedup, response cache)
    priority: int = 0
    owner: str = ""
    use_cache: bool = True  # store the answer in the response cache
    idempotency_key: str | None = None
    read_cache: bool = True  # may be answered from the response cache
    samples: bool = False  # draws a random answer (no seed, temperature not 0): see wants_new_sample
    streaming: bool = False  # the caller streams the answer (a user waiting on it, not a background call)
    model_cap: int = 0  # generations of this model allowed at once (0: no cap of its own)
    affinity: str = ""  # the conversation's leading-messages hash: routing sends it back (rule 8)
    history: int = 0  # leading messages that are stored conversation history (dropped at finish)

    @property
    def interactive(self) -> bool:
        return self.kind == Kind.INTERACTIVE


@dataclass
class Generation:
    """One upstream call and the jobs that share it."""

    generation_id: uuid.UUID
    endpoint: str
    payload: dict[str, Any]
    cache_key: str
    job_ids: list[uuid.UUID] = field(default_factory=list)
    server: str = ""  # the Ollama server it runs on (rule 8)
    loads_model: bool = False  # its model was not loaded there: the server's /api/ps is read again


@dataclass
class Claim:
    """What one claim gave a worker."""

    generations: list[Generation]
    deferred: bool = False  # a fuller batch is worth waiting for (batch_timeout_ms)
    # Every job taken, joins included: (job, its generation, the worker running that generation).
    assigned: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    more: bool = False  # another claim now could take more (a full batch taken, slots left)
    # Nothing was ready, but a job backing off (rule 6) is: the worker looks again this many
    # seconds from now, not a whole poll later.
    retry_in: float | None = None

    @property
    def jobs(self) -> int:
        return len(self.assigned)
