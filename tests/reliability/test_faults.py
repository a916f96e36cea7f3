"""Fault injection: each test reports its figure in its assertion message."""

from __future__ import annotations

import concurrent.futures

import httpx

from queueing.models import Job, Status
from stats import counters
from tests.helpers import messages, wait_for

NO_WORKER = {"QUEUE_EMBEDDED_WORKER": "false"}


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


def test_ollama_faults_leave_no_open_upstream_connections(start_server, ollama):
    server = start_server(OLLAMA_IDLE_TIMEOUT_SECONDS=0.5, OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS=0.5)
    codes = {}
    with server.client() as client:
        for fault in ("refuse", "hang", "http500", "busy", "stall", "malformed", "error_line", "cut"):
            ollama.configure(fault=fault, fault_after=2)
            r = client.post("/api/chat-optimized", json={"messages": messages(f"fault {fault}")})
            codes[fault] = (r.status_code, r.json()["code"])
            ollama.configure(fault=None)
    wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=3)
    assert codes == {
        "refuse": (502, "ollama_unavailable"),
        "hang": (504, "ollama_timeout"),
        "http500": (502, "ollama_error"),
        "busy": (503, "ollama_busy"),
        "stall": (504, "ollama_timeout"),
        "malformed": (502, "ollama_bad_response"),
        "error_line": (502, "ollama_error"),
        "cut": (502, "ollama_bad_response"),
    }, codes
    assert Job.objects.filter(status=Status.FAILED).count() == 8
    with server.client() as client:
        assert client.get("/api/cache-stats").json()["response_cache"]["total_entries"] == 0
