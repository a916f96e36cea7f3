"""Several Ollama servers, on the real test database (no server process): routing at claim time
(rule 8), per-server capacity, the circuit breaker and failover. The live tests with three
emulators are in tests/gateway/test_several_servers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from chatbot_site.config_spec import ServerEntry
from core import servers
from core.errors import OllamaBadResponse, OllamaRejected, OllamaUnavailable
from core.servers import affinity_key
from queueing import fleet, transitions
from queueing.models import Job, Kind, ServerState, Status
from queueing.spec import Claim, JobSpec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_workers")]
MODEL, OTHER, ONLY_B = "llama3.2:1b", "qwen2.5:0.5b", "gemma3:4b"


@pytest.fixture(autouse=True)
def _three_servers(settings):
    settings.OLLAMA_SERVERS = [
        ServerEntry(name="a", url="http://127.0.0.1:1", max_concurrent=2),
        ServerEntry(name="b", url="http://127.0.0.1:2", max_concurrent=2),
        ServerEntry(name="c", url="http://127.0.0.1:3", max_concurrent=1, models=["llama3*"]),
    ]
    settings.BATCH_MAX_BATCH_SIZE = 1
    settings.QUEUE_MAX_QUEUE_SIZE = 10_000
    settings.OLLAMA_FAILURE_THRESHOLD = 3
    settings.OLLAMA_RETRY_SECONDS = 5.0
    fleet.views()
    probed("a", [MODEL, OTHER])
    probed("b", [MODEL, OTHER, ONLY_B])
    probed("c", [MODEL])


def probed(name: str, tags: list[str], loaded: list[str] | None = None) -> None:
    fleet.record_probe(name, version="0.33.0", tags=tags, loaded=loaded or [])


def enqueue(text: str, *, model: str = MODEL, kind: str = Kind.QUEUED, lead: str = "", **fields: Any) -> Job:
    messages = [{"role": "user", "content": lead or text}]
    if lead:
        messages += [{"role": "assistant", "content": "..."}, {"role": "user", "content": text}]
    payload = {"model": model, "messages": messages}
    spec = JobSpec(
        kind=kind, endpoint="chat", model=model, payload=payload, cache_key=f"v2:{model}:{lead}:{text}",
        affinity=affinity_key("chat", payload), **fields,
    )  # fmt: skip
    return transitions.enqueue_request(spec).job


def claim() -> Claim:
    return transitions.claim_batch(worker="w")


def server_of(c: Claim) -> list[str]:
    return [g.server for g in c.generations]


def finish(c: Claim) -> None:
    for g in c.generations:
        transitions.finish_generation(
            worker="w",
            generation_id=g.generation_id,
            chunks=[],
            final={"done_reason": "stop"},
            server=g.server,
        )


def test_the_configured_list_and_the_single_url_as_a_list_of_one(settings):
    assert [(s.name, s.max_concurrent) for s in servers.configured()] == [("a", 2), ("b", 2), ("c", 1)]
    assert servers.total_capacity() == 5
    settings.OLLAMA_SERVERS = []
    settings.OLLAMA_API_URL = "http://gpu-0:11434"
    settings.QUEUE_MAX_CONCURRENT = 3
    (one,) = servers.configured()
    assert (one.name, one.url, one.max_concurrent) == ("gpu-0:11434", "http://gpu-0:11434", 3)


def test_a_model_only_b_has_goes_to_b_every_time():
    for i in range(4):
        enqueue(f"only b {i}", model=ONLY_B)
    picks = [server_of(claim()) for _ in range(4)]
    assert picks == [["b"], ["b"], [], []], picks  # b's two slots; the rest wait for b
    assert Job.objects.filter(status=Status.PENDING).count() == 2


def test_the_server_with_the_model_loaded_first_until_full_then_another_that_has_it():
    probed("a", [MODEL, OTHER], loaded=[MODEL])
    for i in range(5):
        enqueue(f"loaded {i}")
    picks = [s for _ in range(5) for s in server_of(claim())]
    # a holds it loaded (2 slots); then b and c have it, least busy first: b, then c (1 slot), b.
    assert picks[:2] == ["a", "a"], picks
    assert sorted(picks[2:]) == ["b", "b", "c"], picks


def test_configuration_limits_a_server_to_its_models():
    for i in range(5):
        enqueue(f"other {i}", model=OTHER)
    picks = [s for _ in range(5) for s in server_of(claim())]
    assert "c" not in picks and sorted(picks) == ["a", "a", "b", "b"], picks


def test_a_conversation_returns_to_the_server_that_served_it_while_it_has_room():
    for name in "abc":  # the model is loaded everywhere: affinity decides, not the loaded model
        probed(name, [MODEL], loaded=[MODEL])
    first = claim_of(enqueue("turn 1", lead=""))
    assert first == ["a"]  # least busy, then the name
    finish_all()
    # Make a busier than b, so without affinity the next turn would go to b.
    enqueue("someone else")
    assert server_of(claim()) == ["a"]
    follow = enqueue("turn 2", lead="turn 1")
    assert follow.affinity == Job.objects.get(result_final__isnull=False).affinity
    assert server_of(claim()) == ["a"]
    # a is full now: the next turn goes elsewhere.
    enqueue("turn 3", lead="turn 1")
    assert server_of(claim()) == ["b"]


def claim_of(job: Job) -> list[str]:
    return server_of(claim())


def finish_all() -> None:
    for job in Job.objects.running():
        assert job.generation_id is not None
        transitions.finish_generation(
            worker="w",
            generation_id=job.generation_id,
            chunks=[],
            final={"done_reason": "stop"},
            server=job.server,
        )


def test_capacity_is_per_server_and_the_model_cap_applies_per_server():
    for i in range(8):
        enqueue(f"capped {i}", model_cap=1)
    picks = [s for _ in range(8) for s in server_of(claim())]
    assert sorted(picks) == ["a", "b", "c"], picks  # one of the model on each server
    running = {s: Job.objects.running().filter(server=s).count() for s in "abc"}
    assert running == {"a": 1, "b": 1, "c": 1}


def test_a_server_is_out_after_the_threshold_and_back_after_a_successful_probe(settings):
    error = OllamaUnavailable("connection refused")
    now = timezone.now()
    for _ in range(2):
        fleet.record_failure("a", error, now)
    assert ServerState.objects.get(name="a").state == "up"
    fleet.record_failure("a", error, now)
    row = ServerState.objects.get(name="a")
    assert (row.state, row.failures, row.retry_at) == ("out", 3, now + timedelta(seconds=5))
    for i in range(3):
        enqueue(f"while a is out {i}")
    picks = [s for _ in range(3) for s in server_of(claim())]
    assert "a" not in picks, picks
    # Not probed before retry_at; a failed trial doubles the back-off.
    assert "a" not in [s.name for s in fleet.take_due_probes(now + timedelta(seconds=1))]
    later = now + timedelta(seconds=6)
    assert "a" in [s.name for s in fleet.take_due_probes(later)]
    fleet.record_failure("a", error, later)
    assert ServerState.objects.get(name="a").retry_at == later + timedelta(seconds=10)
    probed("a", [MODEL, OTHER])
    row = ServerState.objects.get(name="a")
    assert (row.state, row.failures, row.retry_at) == ("up", 0, None)


def test_one_process_wins_each_probe_lease():
    now = timezone.now()
    first = {s.name for s in fleet.take_due_probes(now)}
    second = {s.name for s in fleet.take_due_probes(now)}
    assert (first, second) == ({"a", "b", "c"}, set())


def test_a_model_no_server_may_serve_fails_with_model_not_found(settings):
    settings.OLLAMA_SERVERS = [
        ServerEntry(name="c", url="http://127.0.0.1:3", max_concurrent=1, models=["llama3*"])
    ]
    doomed = enqueue("nobody", model=OTHER)
    assert claim().generations == []
    doomed.refresh_from_db()
    assert (doomed.status, doomed.error_code) == ("failed", "model_not_found")


def test_while_every_server_is_out_a_queued_request_waits_and_an_interactive_one_fails():
    for name in ("a", "b", "c"):
        for _ in range(3):
            fleet.record_failure(name, OllamaUnavailable("refused"))
    queued = enqueue("waits for a server")
    interactive = enqueue("cannot wait", kind=Kind.INTERACTIVE)
    assert claim().generations == []
    rows = {j.id: j for j in Job.objects.all()}
    assert (rows[interactive.id].status, rows[interactive.id].error_code) == ("failed", "ollama_unavailable")
    assert "refused" in rows[interactive.id].error_message
    assert rows[queued.id].status == "pending"
    probed("b", [MODEL])
    assert server_of(claim()) == ["b"]


def test_a_nameless_model_falls_back_to_any_server_in(settings):
    # No server lists it (pulled since the last probe, or unknown): one that may serve it tries,
    # and Ollama's own answer (404, or the generation) decides.
    enqueue("fresh pull", model="qwen3:0.6b")
    assert server_of(claim()) == ["a"]


def fail(c: Claim, error: Any, *, sent: bool) -> dict[str, int]:
    (g,) = c.generations
    return transitions.fail_generation(
        worker="w", generation_id=g.generation_id, error=error, server=g.server, sent=sent
    )


def test_an_interactive_request_moves_to_another_server_when_nothing_was_sent():
    job = enqueue("failover", kind=Kind.INTERACTIVE)
    first = claim()
    assert fail(first, OllamaUnavailable("refused"), sent=False) == {"retried": 1, "failed": 0}
    again = claim()
    assert server_of(first) == ["a"] and server_of(again) == ["b"]  # the failed server is avoided
    # Tokens were sent: the caller cannot be answered twice, so the stream ends with the error.
    assert fail(again, OllamaBadResponse("cut"), sent=True) == {"retried": 0, "failed": 1}
    assert Job.objects.get(id=job.id).error_code == "ollama_bad_response"


def test_a_queued_request_is_retried_from_the_start_on_another_server_even_after_tokens():
    job = enqueue("queued failover")
    first = claim()
    assert fail(first, OllamaBadResponse("cut"), sent=True) == {"retried": 1, "failed": 0}
    assert server_of(claim()) == ["b"]
    assert Job.objects.get(id=job.id).attempts == 2


def test_the_requests_own_fault_counts_no_failure_and_is_not_moved():
    job = enqueue("bad options", kind=Kind.INTERACTIVE)
    assert fail(claim(), OllamaRejected("invalid option"), sent=False) == {"retried": 0, "failed": 1}
    assert ServerState.objects.get(name="a").failures == 0
    assert Job.objects.get(id=job.id).status == Status.FAILED


def test_a_server_that_failed_runs_one_at_a_time_goes_last_and_a_success_clears_it():
    fleet.record_failure("b", OllamaUnavailable("refused"))
    enqueue("only b has it 1", model=ONLY_B)
    enqueue("only b has it 2", model=ONLY_B)
    first = claim()
    assert server_of(first) == ["b"] and server_of(claim()) == []  # one at a time while suspect
    enqueue("anyone", model=MODEL)
    assert server_of(claim()) == ["a"]  # b goes last
    finish(first)
    assert ServerState.objects.get(name="b").failures == 0
    assert server_of(claim()) == ["b"]  # its full capacity again


def test_dedup_is_global_across_servers():
    enqueue("same question")
    first = claim()
    twin = enqueue("same question")
    assert Job.objects.get(id=twin.id).generation_id == first.generations[0].generation_id
    assert Job.objects.get(id=twin.id).server == first.generations[0].server


def test_affinity_keys():
    one = {"model": MODEL, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    two = {
        **one,
        "messages": [
            *one["messages"],
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
        ],
    }
    assert affinity_key("chat", one) == affinity_key("chat", two) != ""
    assert affinity_key("chat", {**one, "model": OTHER}) != affinity_key("chat", one)
    assert affinity_key("embed", {"model": MODEL, "input": "x"}) == ""
    assert (
        affinity_key("chat", one, "alice/c1")
        == affinity_key("chat", two, "alice/c1")
        != affinity_key("chat", one)
    )
    assert len(affinity_key("generate", {"model": MODEL, "prompt": "p" * 5000})) == 32
    assert uuid.UUID(affinity_key("chat", one))  # 32 hex digits


@pytest.mark.django_db(transaction=True)
def test_show_asks_the_server_that_has_the_model_even_from_a_view_read_before_its_probe(monkeypatch):
    """``/api/show`` and model facts read the servers' view at most once a second: one read before
    the probes listed the models (just after start-up) sent a question about b's model to a, which
    answered 404. A view in which no server has the model is read again."""
    stale = [dataclasses.replace(view, tags=[]) for view in fleet.views()]
    monkeypatch.setattr(fleet, "_memo", (time.monotonic(), stale))
    assert asyncio.run(fleet.server_for(ONLY_B)) == "b"
    assert fleet._memo is not None
    assert [view.has(ONLY_B) for view in fleet._memo[1]] == [False, True, False]  # the view read again
