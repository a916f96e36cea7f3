"""/api/chat-queue end to end: daphne, the embedded worker, the test database, the emulator."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from queueing.models import Job, Status
from tests.fake_ollama import reply_tokens
from tests.helpers import messages, ollama_body, sse_events, submit, wait_for, wait_status


def reply(text: str, count: int = 8) -> str:
    return "".join(reply_tokens({"model": "llama3.2:1b", "messages": messages(text)}, count))


def test_submit_then_fetch_the_result(server, ollama):
    with server.client() as client:
        body = submit(client, "What is Rust?")
        assert set(body) == {"request_id", "status"}
        # The design's status block; a request still waiting also says why ("waiting").
        assert set(body["status"]) - {"waiting"} == {
            "queue_position",
            "queue_length",
            "estimated_wait_time",
            "is_processing",
        }
        done = wait_status(client, body["request_id"])
    assert done["status"] == "completed" and done["queue_position"] == 0
    assert done["result"]["message"] == {"role": "assistant", "content": reply("What is Rust?")}
    assert done["result"]["done_reason"] == "stop" and done["result"]["metrics"]["eval_count"] == 8
    sent = ollama.generation_requests()[-1].body
    assert sent["keep_alive"] == "15m" and sent["stream"] is True


def test_twenty_identical_requests_reach_ollama_once(server, ollama):
    ollama.configure(first_token_delay=0.3, token_delay=0.02)
    with server.client() as client, concurrent.futures.ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda _: submit(client, "same question")["request_id"], range(20)))
        results = [wait_status(client, i) for i in ids]
    assert ollama.calls_for(ollama_body("same question")) == 1
    assert {r["result"]["message"]["content"] for r in results} == {reply("same question")}


def test_twenty_distinct_requests_never_exceed_max_concurrent(start_server, ollama, transactional_db):
    ollama.configure(first_token_delay=0.05, token_delay=0.01)
    server = start_server(QUEUE_MAX_CONCURRENT=2, BATCH_TIMEOUT_MS=0)
    with server.client() as client:
        ids = [submit(client, f"question {i}")["request_id"] for i in range(20)]
        for request_id in ids:
            wait_status(client, request_id, timeout=40)
    stats = ollama.stats()
    assert stats["completed"] == 20 and stats["max_in_flight"] == 2, stats


def test_high_priority_overtakes_earlier_low_priority(server, ollama):
    ollama.configure(first_token_delay=0.5)
    with server.client() as client:
        busy = submit(client, "occupies the slot")["request_id"]
        wait_for(lambda: ollama.stats()["in_flight"] == 1, what="the first generation")
        low = [submit(client, f"low {i}", priority=0)["request_id"] for i in range(2)]
        high = submit(client, "urgent", priority=5)
        assert high["status"]["queue_position"] == 1
        for request_id in [busy, *low, high["request_id"]]:
            wait_status(client, request_id)
    order = [r.body["messages"][0]["content"] for r in ollama.generation_requests()]
    assert order == ["occupies the slot", "urgent", "low 0", "low 1"]


def test_low_priority_is_not_starved_by_a_stream_of_high_priority(start_server, ollama, transactional_db):
    ollama.configure(first_token_delay=0.1, token_count=2)
    server = start_server(QUEUE_PRIORITY_AGING_SECONDS=0.2)
    with server.client() as client:
        submit(client, "occupies the slot")
        wait_for(lambda: ollama.stats()["generations"] >= 1)
        low = submit(client, "patient", priority=-2)["request_id"]
        high = []
        for i in range(12):
            high.append(submit(client, f"urgent {i}", priority=2)["request_id"])
            time.sleep(0.1)
        wait_status(client, low, timeout=30)
        for request_id in high:
            wait_status(client, request_id, timeout=30)
    order = [r.body["messages"][0]["content"] for r in ollama.generation_requests()]
    # 4 steps of priority x 0.2 s = 0.8 s: urgent requests submitted after that run after it.
    position = order.index("patient")
    assert position <= 10, f"the low-priority request ran {position}th: {order}"


def test_queue_full_is_429_with_retry_after_and_stores_nothing(start_server, ollama, transactional_db):
    ollama.configure(first_token_delay=2)
    server = start_server(QUEUE_MAX_QUEUE_SIZE=2)
    with server.client() as client:
        submit(client, "running")
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        submit(client, "pending 1")
        submit(client, "pending 2")
        r = client.post("/api/chat-queue", json={"messages": messages("one too many")})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == "queue_full"
    assert Job.objects.count() == 3


def test_cancel_pending_never_reaches_ollama(server, ollama):
    ollama.configure(first_token_delay=1)
    with server.client() as client:
        submit(client, "running")
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        pending = submit(client, "never runs")["request_id"]
        r = client.delete("/api/chat-queue", params={"requestId": pending})
        assert r.status_code == 200 and r.json() == {"request_id": pending, "status": "cancelled"}
        assert client.delete("/api/chat-queue", params={"requestId": pending}).status_code == 409
        time.sleep(1.5)
    assert ollama.calls_for(ollama_body("never runs")) == 0


def test_cancel_processing_closes_the_upstream_request_within_a_second(server, ollama):
    ollama.configure(token_delay=0.2, token_count=100)
    with server.client() as client:
        request_id = submit(client, "long answer")["request_id"]
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        assert client.delete("/api/chat-queue", params={"requestId": request_id}).status_code == 200
        cancelled_at = time.monotonic()
        wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=1, interval=0.01, what="upstream to close")
        elapsed = time.monotonic() - cancelled_at
        time.sleep(0.3)
        body = client.get("/api/chat-queue", params={"requestId": request_id}).json()
    assert elapsed < 1, elapsed
    assert body["status"] == "cancelled" and "result" not in body
    job = Job.objects.get(id=request_id)
    assert job.result_content == "" and job.status == Status.CANCELLED


def test_unknown_bad_and_missing_ids(server):
    with server.client() as client:
        unknown = client.get("/api/chat-queue", params={"requestId": "550e8400-e29b-41d4-a716-446655440000"})
        bad = client.delete("/api/chat-queue", params={"requestId": "../etc"})
        missing = client.delete("/api/chat-queue")
    assert unknown.status_code == 404 and unknown.json()["code"] == "request_not_found"
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request_id"
    assert missing.status_code == 400 and missing.json()["code"] == "missing_request_id"


def test_idempotency_key_returns_the_same_request(server, ollama):
    with server.client() as client:
        first = submit(client, "once", headers={"Idempotency-Key": "order-42"})
        again = submit(client, "once", headers={"Idempotency-Key": "order-42"})
    assert first["request_id"] == again["request_id"]
    assert Job.objects.count() == 1


def test_queue_overview_for_monitoring(server, ollama):
    ollama.configure(first_token_delay=1)
    with server.client() as client:
        submit(client, "running")
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        submit(client, "waiting", priority=3)
        overview = client.get("/api/chat-queue").json()
    assert overview["queue_length"] == 1 and overview["processing"] == 1
    assert overview["pending_by_priority"] == {"3": 1}
    assert overview["is_processing"] is True and overview["oldest_wait_ms"] >= 0


def test_late_stream_listener_gets_every_token_once_in_order(server, ollama):
    ollama.configure(token_delay=0.05, token_count=30)
    with server.client() as client:
        request_id = submit(client, "stream me")["request_id"]
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        time.sleep(0.5)  # about ten tokens are out before we listen
        with client.stream("GET", "/api/chat-queue/stream", params={"requestId": request_id}) as r:
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
            events = [e for e in sse_events(r.iter_lines()) if e[0] == "message"]
    contents = [data["content"] for _, data in events if not data["done"]]
    assert contents == reply_tokens(ollama_body("stream me"), 30)
    assert events[-1][1]["done"] is True and events[-1][1]["cached"] is False


def test_finished_request_stream_replays_at_once(server, ollama):
    with server.client() as client:
        request_id = submit(client, "already done")["request_id"]
        wait_status(client, request_id)
        r = client.get("/api/chat-queue/stream", params={"requestId": request_id})
    frames = r.text.split("\n\n")
    assert (
        frames[0]
        == 'data: {"content":"'
        + reply_tokens(ollama_body("already done"), 8)[0]
        + '","done":false,"cached":false}'
    )
    assert frames[8].startswith('data: {"done":true,"cached":false')


def test_bad_bodies_are_400_json(server):
    cases = [
        (b"{not json", "invalid_json"),
        (b'{"messages": []}', "invalid_messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "invalid_role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "priority": "high"}', "invalid_priority"),
        (b'{"messages": [{"role": "user", "content": "x"}], "colour": 1}', "unknown_field"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": "http://evil/x"}', "invalid_model"),
    ]
    with server.client() as client:
        for raw, code in cases:
            r = client.post("/api/chat-queue", content=raw, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["code"]) == (400, code), raw
    assert Job.objects.count() == 0


@pytest.mark.parametrize("signal_name", ["SIGTERM"])
def test_restart_completes_every_queued_request_exactly_once(
    start_server, ollama, transactional_db, signal_name
):
    ollama.configure(first_token_delay=1.0, token_delay=0.02, token_count=5)
    server = start_server(QUEUE_MAX_CONCURRENT=2, QUEUE_LEASE_SECONDS=3)
    with server.client() as client:
        ids = [submit(client, f"survive {i}")["request_id"] for i in range(8)]
    wait_for(lambda: ollama.stats()["in_flight"] == 2)
    ollama.configure(first_token_delay=0.1)
    assert server.stop() == 0, server.log[-3000:]
    processing = Job.objects.filter(status=Status.PROCESSING).count()
    assert processing == 0, f"{processing} jobs left processing"  # handed back on SIGTERM
    again = start_server(QUEUE_MAX_CONCURRENT=2, QUEUE_LEASE_SECONDS=3)
    with again.client() as client:
        results = [wait_status(client, i, timeout=30) for i in ids]
    assert all(r["status"] == "completed" for r in results)
    completed = Job.objects.filter(status=Status.COMPLETED).count()
    assert completed == 8, f"{completed} of 8 completed"


def test_worker_killed_mid_generation_request_still_completes_once(start_server, ollama, transactional_db):
    ollama.configure(token_delay=0.1, token_count=20)
    server = start_server(QUEUE_LEASE_SECONDS=2)
    with server.client() as client:
        request_id = submit(client, "survive a crash")["request_id"]
    wait_for(lambda: ollama.stats()["in_flight"] == 1)
    server.kill()
    ollama.configure(token_delay=0.0)
    again = start_server(QUEUE_LEASE_SECONDS=2)
    with again.client() as client:
        done = wait_status(client, request_id, timeout=30)
    job = Job.objects.get(id=request_id)
    assert done["status"] == "completed" and job.attempts == 2
    assert ollama.calls_for(ollama_body("survive a crash")) == 2
    assert done["result"]["message"]["content"] == reply("survive a crash", 20)


def test_status_of_a_request_from_another_client_is_json(server):
    r = httpx.get(
        f"{server.url}/api/chat-queue/stream", params={"requestId": "550e8400-e29b-41d4-a716-446655440000"}
    )
    assert r.status_code == 404 and r.json()["code"] == "request_not_found"
