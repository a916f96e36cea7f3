"""API keys, owner isolation, rate limits and CORS, through daphne."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.helpers import MODEL, messages, ollama_body, submit, wait_for, wait_status
from tests.live import ROOT

ALICE, BOB = "cbk_alice_key_0123456789abcdef", "cbk_bob_key_fedcba9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(start_server):
    return start_server(API_KEYS=KEYS)


def test_api_needs_a_key_and_health_stays_public(keyed):
    with keyed.client() as client:
        missing = client.post("/api/chat-optimized", json={"messages": messages("hi")})
        wrong = client.get("/api/chat-queue", headers=as_("cbk_not_a_key"))
        health = client.get("/health")
        deep = client.get("/health", params={"deep": "1"})
        models = client.get("/v1/models")
        ollama_tags = client.get("/api/tags")
    assert missing.status_code == 401 and missing.json()["code"] == "authentication_required"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="chatbot-backend"'
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"
    assert models.status_code == 401 and ollama_tags.status_code == 401
    assert health.status_code == 200 and health.json() == {"status": "healthy"}
    assert deep.status_code == 200 and ALICE not in deep.text and "alice" not in deep.text


def test_owners_cannot_see_each_others_requests_conversations_or_cache(keyed, ollama):
    with keyed.client(headers=as_(ALICE)) as alice, keyed.client(headers=as_(BOB)) as bob:
        request_id = submit(alice, "alice's secret question")["request_id"]
        wait_status(alice, request_id)
        conversation = alice.post(
            "/api/chat-optimized", json={"messages": messages("remember me"), "conversation_id": "new"}
        ).json()["conversation_id"]
        assert (
            alice.post("/api/chat-optimized", json={"messages": messages("shared?")}).json()["cached"]
            is False
        )

        read = bob.get("/api/chat-queue", params={"requestId": request_id})
        stream = bob.get("/api/chat-queue/stream", params={"requestId": request_id})
        cancel = bob.delete("/api/chat-queue", params={"requestId": request_id})
        history = bob.get(f"/api/conversations/{conversation}")
        forget = bob.delete(f"/api/conversations/{conversation}")
        reuse = bob.post(
            "/api/chat-optimized", json={"messages": messages("x"), "conversation_id": conversation}
        )
        same_question = bob.post("/api/chat-optimized", json={"messages": messages("shared?")})
        own = alice.get("/api/chat-queue", params={"requestId": request_id})
    for response in (read, stream, cancel, history, forget, reuse):
        assert response.status_code == 404, response.text
    assert same_question.json()["cached"] is False  # never a hit on alice's entry
    assert ollama.calls_for(ollama_body("shared?")) == 2
    assert own.json()["status"] == "completed"


def test_shared_cache_lets_owners_share_answers_only(start_server, ollama):
    server = start_server(API_KEYS=KEYS, SHARED_CACHE="true")
    with server.client(headers=as_(ALICE)) as alice, server.client(headers=as_(BOB)) as bob:
        alice.post("/api/chat-optimized", json={"messages": messages("common")})
        assert bob.post("/api/chat-optimized", json={"messages": messages("common")}).json()["cached"] is True
    assert ollama.calls_for(ollama_body("common")) == 1


def test_openai_sdk_authenticates_with_its_api_key(keyed, ollama):
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=ALICE, max_retries=0)
    bad = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="cbk_wrong", max_retries=0)
    assert good.chat.completions.create(model=MODEL, messages=messages("hi")).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_rate_limit_per_minute_is_429_with_retry_after(start_server, ollama):
    server = start_server(API_KEYS=KEYS, RATE_LIMIT_PER_MINUTE=3)
    with server.client(headers=as_(ALICE)) as alice, server.client(headers=as_(BOB)) as bob:
        codes = [alice.get("/api/chat-queue").status_code for _ in range(4)]
        limited = alice.get("/api/chat-queue")
        other = bob.get("/api/chat-queue")
    assert codes == [200, 200, 200, 429]
    assert limited.json()["code"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert other.status_code == 200  # limits are per key


def test_concurrent_streams_limit(start_server, ollama):
    ollama.configure(token_delay=0.1, token_count=30)
    server = start_server(API_KEYS=KEYS, MAX_CONCURRENT_STREAMS=1)
    body = {"messages": messages("long stream"), "stream": True}
    with server.client(headers=as_(ALICE)) as alice:
        with alice.stream("POST", "/api/chat-optimized", json=body) as first:
            lines = first.iter_lines()  # kept: dropping the iterator would close the stream
            assert first.status_code == 200 and next(lines).startswith("data: ")
            second = alice.post("/api/chat-optimized", json={**body, "messages": messages("another")})
        assert second.status_code == 429 and second.json()["code"] == "too_many_streams"
        # The refused stream was never queued: it never reached Ollama.
        assert ollama.calls_for(ollama_body("another")) == 0
        # The slot is free once the server has seen the first client leave (within a second).
        third = wait_for(
            lambda: (
                (
                    r := alice.post("/api/chat-optimized", json={**body, "messages": messages("after")})
                ).status_code
                == 200
                and r
            ),
            timeout=2,
            interval=0.05,
        )
    assert third.status_code == 200


def test_cors_allow_list(start_server):
    server = start_server(CORS_ALLOWED_ORIGINS="https://app.example.org")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    with server.client() as client:
        allowed = client.options(
            "/api/chat-optimized", headers={"Origin": "https://app.example.org", **preflight}
        )
        refused = client.options(
            "/api/chat-optimized", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in refused.headers


def test_wildcard_cors_and_bad_key_lines_are_refused_at_start_up():
    for env in ({"CORS_ALLOWED_ORIGINS": "*"}, {"API_KEYS": "alice:not-a-hash"}):
        result = subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_create_api_key_prints_a_key_whose_hash_it_prints():
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "carol"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    key = lines[1].strip()
    assert result.returncode == 0 and key.startswith("cbk_")
    assert lines[3].strip() == f'"carol:{hash_key(key)}"'
    assert httpx.URL  # the key is usable as a bearer token: see the tests above


# Paths the key check leaves open; a forged Daphne-Root-Path of one of them once opened the rest.
PUBLIC_PREFIXES = ("/health", "/api/schema", "/admin/", "/static/")


def _protected_paths() -> list[str]:
    """Every route that needs a key, parameters filled in, from the URL configuration itself."""
    from chatbot_site import urls

    paths = []
    for pattern in urls.urlpatterns:
        route = str(pattern.pattern)
        if route == "" or any(f"/{route}".startswith(p) for p in PUBLIC_PREFIXES):
            continue
        route = route.replace("<str:conversation_id>", "3f1c1a52-7a3e-4c1e-9a43-9d7e2f0e1b11")
        route = route.replace("<path:digest>", "sha256:" + "0" * 64)
        paths.append(f"/{route}")
    return paths


def test_a_forged_root_path_header_never_skips_the_key(keyed, ollama):
    paths = _protected_paths()
    assert "/api/chat-optimized" in paths and "/metrics" in paths and "/v1/chat/completions" in paths
    answered = []
    body = {"model": MODEL, "messages": messages("forged"), "prompt": "forged"}
    with keyed.client() as client:
        for prefix in PUBLIC_PREFIXES:
            forged = {"Daphne-Root-Path": prefix.rstrip("/")}
            for path in paths:
                for url in (path, prefix.rstrip("/") + path):
                    for method in ("GET", "POST"):
                        r = client.request(method, url, json=body, headers=forged)
                        to_login = r.status_code == 302 and "/admin/login/" in r.headers["location"]
                        if r.status_code not in (401, 403, 404) and not to_login:
                            answered.append((method, url, prefix, r.status_code))
        with_key = client.get("/api/chat-queue", headers={**as_(ALICE), "Daphne-Root-Path": "/health"})
    assert answered == []
    assert ollama.generation_requests() == []
    assert with_key.status_code == 200  # the header changes nothing for a request with a key
