"""/api/chat-optimized end to end through daphne, on the deployment of this run."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import socket
import time

import httpx
import pytest

from chat.caches import response_cache
from queueing.models import Job, Status
from tests.fake_ollama import reply_tokens
from tests.helpers import messages, ollama_body, sse_events, wait_for

URL = "/api/chat-optimized"


def ask(client: httpx.Client, text: str, **fields):
    return client.post(URL, json={"messages": messages(text), **fields})


def stream_frames(client: httpx.Client, text: str, **fields) -> list[str]:
    with client.stream("POST", URL, json={"messages": messages(text), "stream": True, **fields}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        return [frame for frame in r.read().decode().split("\n\n") if frame]


def content_frames(frames: list[str]) -> list[str]:
    return [f for f in frames if f.startswith('data: {"content"')]


def test_non_streaming_shape_then_a_cache_hit(server, ollama):
    with server.client() as client:
        first = ask(client, "What is Rust?")
        second = ask(client, "What is Rust?")
    expected = "".join(reply_tokens(ollama_body("What is Rust?"), 8))
    body = first.json()
    assert first.status_code == 200
    assert list(body) == ["message", "cached", "model", "done_reason", "metrics"]
    assert body["message"] == {"role": "assistant", "content": expected} and body["cached"] is False
    assert body["model"] == "llama3.2:1b" and body["done_reason"] == "stop"
    assert body["metrics"]["eval_count"] == 8 and body["metrics"]["total_duration"] > 0
    assert second.json() == {**body, "cached": True}
    assert ollama.calls_for(ollama_body("What is Rust?")) == 1


def test_stream_frames_are_the_chat_optimized_format_byte_for_byte_and_replay_from_cache(server, ollama):
    with server.client() as client:
        fresh = stream_frames(client, "Stream it")
        again = stream_frames(client, "Stream it")
    tokens = reply_tokens(ollama_body("Stream it"), 8)
    assert content_frames(fresh) == [
        "data: " + json.dumps({"content": t, "done": False, "cached": False}, separators=(",", ":"))
        for t in tokens
    ]
    assert fresh[-1].startswith('data: {"done":true,"cached":false,"done_reason":"stop","metrics":{')
    assert content_frames(again) == [
        f.replace('"cached":false', '"cached":true') for f in content_frames(fresh)
    ]
    assert again[-1].startswith('data: {"done":true,"cached":true')
    assert ollama.calls_for(ollama_body("Stream it")) == 1


def test_each_chunk_is_flushed_as_it_arrives(server, ollama):
    ollama.configure(token_delay=0.2, token_count=5)
    arrivals = []
    with (
        server.client() as client,
        client.stream("POST", URL, json={"messages": messages("slowly"), "stream": True}) as r,
    ):
        for event, data in sse_events(r.iter_lines()):
            if event == "message" and not data["done"]:
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 5 and min(gaps) > 0.1, gaps  # not buffered into one burst


def test_twenty_identical_concurrent_streams_share_one_generation(server, ollama):
    ollama.configure(first_token_delay=0.3, token_delay=0.02, token_count=16)
    with server.client() as client, concurrent.futures.ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda _: content_frames(stream_frames(client, "popular")), range(20)))
    assert ollama.calls_for(ollama_body("popular")) == 1
    assert all(s == streams[0] for s in streams) and len(streams[0]) == 16


def test_disconnect_after_first_token_cancels_upstream_and_caches_nothing(server, ollama):
    ollama.configure(token_delay=0.1, token_count=100)
    with server.client() as client:
        with client.stream("POST", URL, json={"messages": messages("leave early"), "stream": True}) as r:
            for event, _ in sse_events(r.iter_lines()):
                if event == "message":
                    break
        left_at = time.monotonic()
        wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=1, interval=0.01, what="upstream to close")
    assert time.monotonic() - left_at < 1
    wait_for(lambda: Job.objects.filter(status=Status.CANCELLED).count() == 1, timeout=5)
    assert response_cache.totals().entries == 0


def test_disconnect_of_one_listener_keeps_the_shared_generation_for_the_other(server, ollama):
    ollama.configure(token_delay=0.05, token_count=30)
    with server.client() as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        stayer = pool.submit(lambda: content_frames(stream_frames(client, "shared")))
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        with client.stream("POST", URL, json={"messages": messages("shared"), "stream": True}) as r:
            next(e for e in sse_events(r.iter_lines()) if e[0] == "message")
        frames = stayer.result(timeout=20)
    assert len(frames) == 30 and ollama.calls_for(ollama_body("shared")) == 1
    assert ollama.stats()["aborted"] == 0


def test_use_cache_false_and_cache_disabled_bypass_the_cache(start_server, ollama):
    server = start_server(CACHE_ENABLED="false")
    with server.client() as client:
        ask(client, "again and again")
        again = ask(client, "again and again", use_cache=True)
    assert again.json()["cached"] is False
    assert ollama.calls_for(ollama_body("again and again")) == 2


def test_use_cache_false_always_generates(server, ollama):
    with server.client() as client:
        ask(client, "fresh please")
        fresh = ask(client, "fresh please", use_cache=False)
    assert fresh.json()["cached"] is False and ollama.calls_for(ollama_body("fresh please")) == 2


def test_options_and_keep_alive_reach_ollama(server, ollama):
    with server.client() as client:
        r = ask(
            client, "tuned", options={"temperature": 0.2, "num_predict": 3, "stop": ["\n"]}, keep_alive="30m"
        )
    sent = ollama.generation_requests()[-1].body
    assert sent["options"] == {"temperature": 0.2, "num_predict": 3, "stop": ["\n"]}
    assert sent["keep_alive"] == "30m"
    assert r.json()["done_reason"] == "length" and r.json()["metrics"]["eval_count"] == 3


def test_conversation_history_is_prepended_and_stored(server, ollama):
    with server.client() as client:
        first = ask(client, "My name is Ada.", conversation_id="new")
        conversation_id = first.json()["conversation_id"]
        assert first.headers["X-Conversation-ID"] == conversation_id
        ask(client, "What is my name?", conversation_id=conversation_id)
        history = client.get(f"/api/conversations/{conversation_id}").json()
        assert client.delete(f"/api/conversations/{conversation_id}").status_code == 204
        gone = client.get(f"/api/conversations/{conversation_id}")
        unknown = ask(client, "hello?", conversation_id="550e8400-e29b-41d4-a716-446655440000")
    sent = ollama.generation_requests()[-1].body["messages"]
    assert [m["content"] for m in sent] == [
        "My name is Ada.",
        first.json()["message"]["content"],
        "What is my name?",
    ]
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert gone.status_code == 404 and gone.json()["code"] == "conversation_not_found"
    assert unknown.status_code == 404 and unknown.json()["code"] == "conversation_not_found"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": "hello"}', 400, "invalid_messages"),
        (b"{}", 400, "invalid_messages"),
        (b'{"messages": []}', 400, "invalid_messages"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "invalid_role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', 400, "invalid_messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "invalid_stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "priority": 1.5}', 400, "invalid_priority"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "options": {"temperature": NaN}}',
            400,
            "invalid_json",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "options": {"top_p": "high"}}',
            400,
            "invalid_options",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "think": "hard"}', 400, "invalid_think"),
        (b'{"messages": [{"role": "user", "content": "x\\u0000y"}]}', 400, "invalid_text"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "invalid_text"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": "../../etc"}', 400, "invalid_model"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "conversation_id": "abc"}',
            400,
            "invalid_conversation_id",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "extra": 1}', 400, "unknown_field"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 2_000_000 + b'"}]}', 413, "body_too_large"),
    ],
)
def test_malformed_input_is_a_4xx_json_error(server, ollama, raw, status, code):
    with server.client() as client:
        r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (status, code), r.text[:300]
    assert set(r.json()) == {"error", "code"}
    assert ollama.stats()["requests"] == 0


def test_deeply_nested_json_is_refused(server):
    nested = {"messages": messages("x"), "format": {}}
    inner = nested["format"]
    for _ in range(40):
        inner["a"] = {}
        inner = inner["a"]
    with server.client() as client:
        r = client.post(URL, json=nested)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"


def test_too_many_messages_and_too_long_message(start_server, ollama):
    server = start_server(LIMITS_MAX_MESSAGES=3, LIMITS_MAX_MESSAGE_CHARS=10)
    with server.client() as client:
        many = client.post(URL, json={"messages": messages("a") * 4})
        long = client.post(URL, json={"messages": messages("x" * 11)})
    assert many.status_code == 400 and many.json()["code"] == "too_many_messages"
    assert long.status_code == 400 and long.json()["code"] == "message_too_long"


def test_ollama_down_is_502_json_and_caches_nothing(server, ollama):
    ollama.configure(fault="refuse")
    with server.client() as client:
        plain = ask(client, "anyone there?")
        streamed = client.post(URL, json={"messages": messages("anyone there?"), "stream": True})
    for r in (plain, streamed):
        assert r.status_code == 502 and r.json()["code"] == "ollama_unavailable", r.text
    assert response_cache.totals().entries == 0


def test_unknown_model_is_404(server, ollama):
    with server.client() as client:
        r = ask(client, "hi", model="nosuch:7b")
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"


def test_ollama_busy_is_503_with_retry_after(server, ollama):
    ollama.configure(fault="busy")
    with server.client() as client:
        r = ask(client, "busy?")
    assert r.status_code == 503 and r.json()["code"] == "ollama_busy" and int(r.headers["Retry-After"]) >= 1


def test_slow_ollama_times_out_with_504(start_server, ollama):
    ollama.configure(fault="hang")
    server = start_server(OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS=0.5)
    with server.client() as client:
        started = time.monotonic()
        r = ask(client, "too slow")
    assert r.status_code == 504 and r.json()["code"] == "ollama_timeout"
    assert time.monotonic() - started < 5


def test_error_mid_stream_is_one_error_frame_then_the_end(server, ollama):
    ollama.configure(fault="error_line", fault_after=3)
    with server.client() as client:
        frames = stream_frames(client, "break halfway")
    assert len(content_frames(frames)) == 3
    assert frames[-1].startswith("event: error\ndata: {")
    error = json.loads(frames[-1].split("data: ", 1)[1])
    assert error["code"] == "ollama_error" and "out of memory" in error["error"]
    assert response_cache.totals().entries == 0


@pytest.mark.parametrize("fault", ["stall", "cut", "malformed"])
def test_broken_streams_end_with_an_error_and_no_hung_sockets(start_server, ollama, fault):
    ollama.configure(fault=fault, fault_after=2)
    server = start_server(OLLAMA_IDLE_TIMEOUT_SECONDS=0.5)
    with server.client() as client:
        r = client.post(URL, json={"messages": messages(f"broken {fault}"), "stream": True})
    # Before the listener's first token the failure is a plain JSON error (status 502/504); after it,
    # one SSE error frame. Which one depends on timing (the fault comes after two tokens).
    if r.headers["content-type"] == "text/event-stream":
        frames = [f for f in r.text.split("\n\n") if f]
        assert frames[-1].startswith("event: error"), frames
        code = json.loads(frames[-1].split("data: ", 1)[1])["code"]
    else:
        assert r.status_code in (502, 504), r.text
        code = r.json()["code"]
    assert (
        code
        == {"stall": "ollama_timeout", "cut": "ollama_bad_response", "malformed": "ollama_bad_response"}[
            fault
        ]
    )
    wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=2)
    assert response_cache.totals().entries == 0


def test_heartbeat_comment_during_silence(start_server, ollama):
    ollama.configure(first_token_delay=2.5, token_count=2)
    server = start_server(SSE_HEARTBEAT_SECONDS=0.5)
    with server.client() as client:
        # Something ahead in the queue, so the stream starts before the first token arrives.
        client.post("/api/chat-queue", json={"messages": messages("ahead")})
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        frames = stream_frames(client, "wait for it")
    assert ": ping" in frames
    assert frames[0].startswith('event: queue\ndata: {"queue_position":1')


@pytest.mark.xfail(
    strict=False,
    reason="known defect, under investigation: a client that never reads and resets its socket is "
    "sometimes noticed late (over 2 s, twice in about ten CI runs); reading clients are covered above",
)
def test_a_client_that_never_reads_and_leaves_does_not_hold_the_generation(server, ollama):
    ollama.configure(token_delay=0.1, token_count=100)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"messages": messages("fire and forget"), "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/chat-optimized HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: ollama.stats()["in_flight"] == 1, what="the generation to start")
    wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=1, interval=0.01, what="upstream to close")
    wait_for(lambda: Job.objects.filter(status=Status.CANCELLED).count() == 1, timeout=5)
