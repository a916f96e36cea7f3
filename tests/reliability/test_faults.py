"""Fault injection: each test reports its figure in its assertion message."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from queueing.models import Job, Status
from stats import counters
from tests.helpers import messages, submit, wait_for, wait_status

NO_WORKER = {"QUEUE_EMBEDDED_WORKER": "false"}
FINISHED = ("completed", "failed", "cancelled")


def test_fifty_concurrent_submits_against_a_queue_of_twenty(start_server, ollama):
    server = start_server(QUEUE_MAX_QUEUE_SIZE=20, **NO_WORKER)  # nothing drains: the limit alone decides

    def submit(i: int) -> int:
        return httpx.post(
            f"{server.url}/api/chat-queue", json={"messages": messages(f"burst {i}")}, timeout=30
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(submit, range(50)))
    accepted, refused = codes.count(202), codes.count(429)
    stored = Job.objects.count()
    assert (accepted, refused, stored) == (20, 30, 20), (
        f"accepted {accepted}, refused {refused}, stored {stored}"
    )


def test_restart_with_a_hundred_queued_completes_each_once(start_server, ollama):
    ollama.configure(token_count=4)
    idle = start_server(QUEUE_MAX_QUEUE_SIZE=1000, **NO_WORKER)
    with idle.client() as client:
        ids = [
            client.post("/api/chat-queue", json={"messages": messages(f"q{i}")}).json()["request_id"]
            for i in range(100)
        ]
    assert idle.stop() == 0
    assert Job.objects.filter(status=Status.PENDING).count() == 100
    server = start_server(QUEUE_MAX_CONCURRENT=4, QUEUE_MAX_QUEUE_SIZE=1000)
    wait_for(lambda: Job.objects.filter(status=Status.COMPLETED).count() == 100, timeout=60)
    server.stop()
    stuck = Job.objects.filter(status=Status.PROCESSING).count()
    completions = counters.read([counters.COMPLETED])[counters.COMPLETED]
    upstream = ollama.stats()["generations"]
    assert (stuck, completions, upstream) == (0, 100, 100), (
        f"stuck {stuck}, completions {completions}, upstream calls {upstream} for {len(set(ids))} requests"
    )


FAULTS = {
    "refuse": (502, "ollama_unavailable"),
    "hang": (504, "ollama_timeout"),
    "http500": (502, "ollama_error"),
    "busy": (503, "ollama_busy"),
    "stall": (504, "ollama_timeout"),
    "malformed": (502, "ollama_bad_response"),
    "error_line": (502, "ollama_error"),
    "cut": (502, "ollama_bad_response"),
}


def test_ollama_faults_map_to_errors_in_time_and_leave_no_open_upstream_connections(start_server, ollama):
    timeout = 0.5
    # The circuit breaker would take the one server out after three faults in a row and answer
    # every later request at once with ollama_unavailable: here each fault's own mapping is tested.
    server = start_server(
        OLLAMA_IDLE_TIMEOUT_SECONDS=timeout,
        OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS=timeout,
        OLLAMA_FAILURE_THRESHOLD=100,
    )
    open_after_round, slowest = [], 0.0
    with server.client() as client:
        for round_ in range(3):
            codes = {}
            for fault in FAULTS:
                ollama.configure(fault=fault, fault_after=2)
                started = time.monotonic()
                r = client.post("/api/chat-optimized", json={"messages": messages(f"fault {fault} {round_}")})
                slowest = max(slowest, time.monotonic() - started)
                codes[fault] = (r.status_code, r.json()["code"])
                ollama.configure(fault=None)
            assert codes == FAULTS, codes
            wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=3)
            # Connections the gateway still holds: its keep-alive pool, not one per fault.
            open_after_round.append(ollama.stats()["connections_open"])
    figures = (
        f"slowest error {slowest:.2f} s (timeouts {timeout} s); "
        f"connections open after each round {open_after_round}"
    )
    assert slowest < timeout + 1.5, figures
    # A leak would leave one per fault (8 a round); the pool and the probes' keep-alive hold a few.
    assert max(open_after_round) <= 4, figures
    assert Job.objects.filter(status=Status.FAILED).count() == 3 * len(FAULTS), figures
    with server.client() as client:
        assert client.get("/api/cache-stats").json()["response_cache"]["total_entries"] == 0


def test_queued_requests_ride_out_a_busy_ollama_and_spend_attempts_only_on_real_errors(start_server, ollama):
    server = start_server(QUEUE_MAX_ATTEMPTS=3, QUEUE_RETRY_BASE_SECONDS=0.2, QUEUE_RETRY_WINDOW_SECONDS=3,
                          OLLAMA_FAILURE_THRESHOLD=100)  # fmt: skip
    with server.client() as client:
        ollama.configure(fault="busy", fault_times=4)  # Ollama loading a model: 503, then fine
        recovered = submit(client, "answered once Ollama is ready")["request_id"]
        done = wait_status(client, recovered, FINISHED)
        ollama.configure(fault="busy", fault_times=0)  # until the retry window closes
        doomed = submit(client, "never answered")["request_id"]
        failed = wait_status(client, doomed, FINISHED)
        ollama.configure(fault="http500")  # a real error: it spends the attempts
        broken = submit(client, "an error each time")["request_id"]
        errored = wait_status(client, broken, FINISHED)
        ollama.configure(fault=None)
    jobs = {str(job.id): job for job in Job.objects.all()}
    waited = (jobs[doomed].finished_at - jobs[doomed].created_at).total_seconds()
    figures = (
        f"recovered: {done['status']} after {jobs[recovered].attempts} attempts; doomed: {failed['status']} "
        f"after {waited:.1f} s, {failed.get('error')}; broken: {errored['status']} after "
        f"{jobs[broken].attempts} attempts; busy answers {ollama.stats()['faults_served']}"
    )
    assert (done["status"], jobs[recovered].attempts) == ("completed", 1), figures
    assert (failed["status"], failed["error"]["code"]) == ("failed", "ollama_busy"), figures
    assert "busy" in failed["error"]["error"] and 3 <= waited < 8, figures
    spent = (errored["status"], jobs[broken].attempts, errored["error"]["code"])
    assert spent == ("failed", 3, "ollama_error"), figures
