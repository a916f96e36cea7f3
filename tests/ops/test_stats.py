"""/api/cache-stats, /metrics and the operations commands, with figures from a known sequence."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import messages, wait_for
from tests.live import ROOT, server_env

TOKEN = "s3cret-operator-token"


def ask(client: httpx.Client, text: str, **fields) -> httpx.Response:
    return client.post("/api/chat-optimized", json={"messages": messages(text), **fields})


def run_sequence(client: httpx.Client, ollama) -> None:
    """9 generation requests: 3 cache hits, 6 misses, 2 deduplicated, 1 cancelled; 2 conversation lookups."""
    assert ask(client, "a").json()["cached"] is False
    assert ask(client, "a").json()["cached"] is True
    assert ask(client, "b").json()["cached"] is False
    assert ask(client, "b").json()["cached"] is True
    assert ask(client, "b").json()["cached"] is True
    ollama.configure(token_delay=0.1, token_count=100)
    occupier = client.post("/api/chat-queue", json={"messages": messages("occupier")}).json()["request_id"]
    wait_for(lambda: ollama.stats()["in_flight"] == 1)
    ollama.configure(token_delay=0, token_count=8)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(ask, client, "c") for _ in range(3)]
        wait_for(lambda: client.get("/api/chat-queue").json()["queue_length"] == 3)
        assert client.delete("/api/chat-queue", params={"requestId": occupier}).status_code == 200
        assert [f.result().json()["cached"] for f in pending] == [False, False, False]
    conversation = ask(client, "d", conversation_id="new").json()["conversation_id"]
    assert ask(client, "e", conversation_id=conversation).status_code == 200
    unknown = ask(client, "f", conversation_id="550e8400-e29b-41d4-a716-446655440000")
    assert unknown.status_code == 404


def test_every_figure_after_a_known_sequence(start_server, ollama):
    server = start_server()
    with server.client() as client:
        run_sequence(client, ollama)
        stats = client.get("/api/cache-stats").json()
    upstream = ollama.stats()
    # a, b, the occupier (cut short by its cancel), c once for three requests, d, e.
    assert (upstream["generations"], upstream["completed"], upstream["aborted"]) == (6, 5, 1)
    response = stats["response_cache"]
    assert response["hits"] == 3 and response["misses"] == 8  # a b occupier c c c d e
    assert response["hit_rate"] == round(3 / 11, 4) and response["miss_rate"] == round(8 / 11, 4)
    assert response["total_entries"] == 5  # a b c d e: nothing for the cancelled occupier
    assert response["total_size_mb"] == round(response["total_size_bytes"] / 1048576, 4) > 0
    assert response["memory_usage_percent"] == round(response["total_size_bytes"] * 100 / (256 * 1048576), 2)
    conversation = stats["conversation_cache"]
    assert (conversation["hits"], conversation["misses"], conversation["total_entries"]) == (1, 1, 1)
    assert conversation["hit_rate"] == 0.5 and "miss_rate" not in conversation
    batch = stats["batch_processor"]
    assert batch["total_requests"] == 11 and batch["cached_responses"] == 3
    assert batch["cache_hit_rate"] == round(300 / 11, 2)
    # Claims: a, b, occupier, the three c's together, d, e -> 8 jobs in 6 batches.
    assert (batch["batches"], batch["average_batch_size"]) == (6, round(8 / 6, 2))
    assert batch["deduplicated_requests"] == 2
    requests = stats["requests"]
    assert (requests["cancelled"], requests["completed"], requests["generations"]) == (1, 7, 5)
    assert requests["average_generation_ms"] > 0
    assert stats["queue_length"] == 0 and stats["is_processing"] is False
    assert (
        stats["ollama"]["reachable"] is True and stats["ollama"]["loaded_models"][0]["name"] == "llama3.2:1b"
    )
    assert stats["timestamp"].endswith("Z")


def test_metrics_parse_and_match_the_stats(start_server, ollama):
    server = start_server()
    with server.client() as client:
        run_sequence(client, ollama)
        stats = client.get("/api/cache-stats").json()
        text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("chatbot_cache_hits_total", (("cache", "responses"),))] == stats["response_cache"]["hits"]
    assert (
        samples[("chatbot_cache_misses_total", (("cache", "responses"),))]
        == stats["response_cache"]["misses"]
    )
    assert (
        samples[("chatbot_cache_bytes", (("cache", "responses"),))]
        == stats["response_cache"]["total_size_bytes"]
    )
    assert samples[("chatbot_requests_deduplicated_total", ())] == 2
    assert samples[("chatbot_requests_cancelled_total", ())] == 1
    assert samples[("chatbot_queue_requests", (("status", "pending"),))] == 0
    assert samples[("chatbot_upstream_generation_seconds_count", ())] >= 5
    ok = (
        "chatbot_http_requests_total",
        (("endpoint", "chat-optimized"), ("method", "POST"), ("status", "200")),
    )
    assert samples[ok] >= 10


def test_unauthenticated_actions_are_refused(server):
    with server.client() as client:
        anonymous = client.post("/api/cache-stats", json={"action": "clear"})
        wrong = client.post("/api/cache-stats", json={"action": "clear"}, headers={"X-Admin-Token": "guess"})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "authentication_required"
    assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_admin_token"


def test_actions_with_the_admin_token(start_server, ollama):
    server = start_server(ADMIN_TOKEN=TOKEN)
    headers = {"X-Admin-Token": TOKEN}
    with server.client(headers=headers) as client:
        ask(client, "cache me")
        ask(client, "remember me", conversation_id="new")
        assert client.get("/api/cache-stats").json()["response_cache"]["total_entries"] == 2
        cleared = client.post("/api/cache-stats", json={"action": "clear_response_cache"}).json()
        after = client.get("/api/cache-stats").json()
        assert cleared == {"action": "clear_response_cache", "status": "ok", "cleared": {"responses": 2}}
        assert (
            after["response_cache"]["total_entries"] == 0
            and after["conversation_cache"]["total_entries"] == 1
        )
        client.post("/api/cache-stats", json={"action": "clear"})
        assert client.get("/api/cache-stats").json()["conversation_cache"]["total_entries"] == 0

        warm = client.post(
            "/api/cache-stats", json={"action": "warm_model", "data": {"model": "qwen2.5:0.5b"}}
        )
        missing = client.post("/api/cache-stats", json={"action": "warm_model", "data": {"model": "nope:1b"}})
        bad_name = client.post(
            "/api/cache-stats", json={"action": "warm_model", "data": {"model": "x; rm -rf"}}
        )
        unknown = client.post("/api/cache-stats", json={"action": "reboot"})
    assert warm.status_code == 200 and warm.json()["loaded"] is True and warm.json()["done_reason"] == "load"
    load = [r for r in ollama.requests if r.path == "/api/chat" and r.body.get("messages") == []]
    assert load[-1].body == {"model": "qwen2.5:0.5b", "messages": [], "keep_alive": "15m"}
    assert "qwen2.5:0.5b" in ollama.stats()["loaded"]
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    assert bad_name.status_code == 400 and bad_name.json()["code"] == "invalid_model"
    assert unknown.status_code == 400 and "clear, clear_response_cache" in unknown.json()["error"]
    assert not [r for r in ollama.requests if r.path in ("/api/pull", "/api/delete", "/api/create")]


def test_staff_session_needs_its_csrf_token(server, ollama, transactional_db):
    results = {}
    for name, staff in (("ops", True), ("eve", False)):
        session = Client()
        session.force_login(User.objects.create_user(name, password="pw-123456", is_staff=staff))
        with server.client(cookies={"sessionid": session.cookies["sessionid"].value}) as client:
            client.get("/admin/login/", follow_redirects=True)  # sets the csrftoken cookie
            no_token = client.post("/api/cache-stats", json={"action": "clear"})
            with_token = client.post(
                "/api/cache-stats",
                json={"action": "clear"},
                headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": server.url + "/"},
            )
            results[name] = (no_token.status_code, with_token.status_code)
    assert results == {"ops": (403, 200), "eve": (403, 403)}


def manage(server_base_env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(server_base_env, {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_commands_act_on_what_the_server_cached(server, ollama, server_base_env):
    with server.client() as client:
        ask(client, "one")
        ask(client, "two", conversation_id="new")
    stats = json.loads(manage(server_base_env, "cache_stats").stdout)
    assert stats["response_cache"]["total_entries"] == 2 and stats["conversation_cache"]["total_entries"] == 1

    responses_only = manage(server_base_env, "clear-cache", "--responses")
    assert (
        responses_only.returncode == 0 and "cleared the responses cache (2 entries)" in responses_only.stdout
    )
    everything = manage(server_base_env, "clear_cache")
    assert everything.returncode == 0 and "cleared the conversations cache (1 entries)" in everything.stdout
    with server.client() as client:
        after = client.get("/api/cache-stats").json()
    assert after["response_cache"]["total_entries"] == 0 and after["conversation_cache"]["total_entries"] == 0

    warm = manage(server_base_env, "warm_model", "--model", "deepseek-r1:8b", "--keep-alive", "30m")
    assert warm.returncode == 0 and "deepseek-r1:8b is loaded (keep_alive 30m)" in warm.stdout
    loads = [r.body for r in ollama.requests if (r.method, r.path) == ("POST", "/api/chat")]
    assert loads[-1] == {"model": "deepseek-r1:8b", "messages": [], "keep_alive": "30m"}
    missing = manage(server_base_env, "warm_model", "--model", "absent:1b")
    assert missing.returncode == 1 and "Ollama has no model 'absent:1b'" in missing.stderr


def test_warm_on_start_loads_the_model(start_server, ollama):
    start_server(OLLAMA_WARM_ON_START="true")
    wait_for(lambda: "llama3.2:1b" in ollama.stats()["loaded"], timeout=10)


@pytest.mark.parametrize("deep", [False, True])
def test_health_stays_public(server, deep):
    r = httpx.get(f"{server.url}/health", params={"deep": "1"} if deep else {})
    assert r.status_code == 200
