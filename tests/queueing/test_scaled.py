"""Scaled out: several daphne processes and runworker processes on Redis + PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from queueing.models import Job, Status
from stats import counters
from tests.helpers import ollama_body, submit, wait_for, wait_status

pytestmark = pytest.mark.scaled

SCALED_ENV = {"QUEUE_EMBEDDED_WORKER": "false", "QUEUE_MAX_CONCURRENT": 2, "BATCH_TIMEOUT_MS": 0}


def test_two_servers_two_workers_hundred_requests(start_server, start_worker, ollama, transactional_db):
    ollama.configure(first_token_delay=0.05, token_delay=0.005, token_count=4)
    servers = [start_server(**SCALED_ENV), start_server(**SCALED_ENV)]
    for _ in range(2):
        start_worker(**SCALED_ENV)
    # 60 distinct prompts and 40 repeats of 4 popular ones, sent to both servers at once.
    prompts = [f"distinct {i}" for i in range(60)] + [f"popular {i % 4}" for i in range(40)]

    def send(indexed: tuple[int, str]) -> str:
        index, prompt = indexed
        with servers[index % 2].client() as client:
            return submit(client, prompt)["request_id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, enumerate(prompts)))
    with servers[0].client() as client:
        for request_id in ids:
            wait_status(client, request_id, timeout=60)

    stats = ollama.stats()
    completed = Job.objects.filter(status=Status.COMPLETED).count()
    assert completed == 100, f"{completed} of 100 completed"
    # Each process writes its counters within half a second; the figures must add up to all 100.
    cached = Job.objects.filter(cached=True).count()
    wait_for(lambda: counters.read([counters.COMPLETED])[counters.COMPLETED] + cached == 100, timeout=5)
    assert stats["max_in_flight"] <= 2, stats
    assert stats["generations"] == 64, f"{stats['generations']} upstream calls for 64 distinct prompts"
    for i in range(4):
        assert ollama.calls_for(ollama_body(f"popular {i}")) == 1


def test_runworker_killed_mid_generation_completes_once(start_server, start_worker, ollama, transactional_db):
    ollama.configure(token_delay=0.1, token_count=20)
    env = {**SCALED_ENV, "QUEUE_LEASE_SECONDS": 2}
    server = start_server(**env)
    doomed = start_worker(**env)
    with server.client() as client:
        request_id = submit(client, "outlive the worker")["request_id"]
        wait_for(lambda: ollama.stats()["in_flight"] == 1, what="the generation to start")
        doomed.kill()
        ollama.configure(token_delay=0.0)
        start_worker(**env)
        done = wait_status(client, request_id, timeout=30)
    job = Job.objects.get(id=request_id)
    assert done["status"] == "completed" and job.attempts == 2
    assert ollama.calls_for(ollama_body("outlive the worker")) == 2
    wait_for(lambda: counters.read([counters.COMPLETED])[counters.COMPLETED] == 1)
    time.sleep(1)
    assert counters.read([counters.COMPLETED])[counters.COMPLETED] == 1
