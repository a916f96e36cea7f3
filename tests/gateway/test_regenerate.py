"""A chat UI's Regenerate gets a new answer; deterministic repeats and other owners keep the cache;
``Cache-Control`` is honoured on every surface."""

from __future__ import annotations

import time

import httpx

from gateway.auth import hash_key
from tests.helpers import MODEL, messages

ALICE, BOB = "cbk_alice_regenerate_0001", "cbk_bob_regenerate_0002"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"


def chat(client: httpx.Client, text: str, key: str = ALICE, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": messages(text), "stream": False, **fields}
    return client.post("/api/chat", json=body, headers={"Authorization": f"Bearer {key}"})


def test_open_webui_regenerate_reaches_the_upstream_again_and_a_seeded_repeat_does_not(start_server, ollama):
    server = start_server(API_KEYS=KEYS, SHARED_CACHE="true", CACHE_REGENERATE_WITHIN_SECONDS=1)
    with server.client() as client:
        # Open WebUI's Regenerate: the identical streaming request, same user, right after.
        body = {"model": MODEL, "messages": messages("Tell me a joke")}
        auth = {"Authorization": f"Bearer {ALICE}"}
        client.post("/api/chat", json=body, headers=auth).raise_for_status()
        client.post("/api/chat", json=body, headers=auth).raise_for_status()
        assert len(ollama.generations_received()) == 2  # a new sample
        # Another owner sharing the cache is served the latest answer from it.
        chat(client, "Tell me a joke", key=BOB)
        assert len(ollama.generations_received()) == 2
        # Deterministic requests are repeats, not requests for a new sample.
        chat(client, "seeded", options={"seed": 42})
        chat(client, "seeded", options={"seed": 42})
        chat(client, "cold", options={"temperature": 0})
        chat(client, "cold", options={"temperature": 0})
        assert len(ollama.generations_received()) == 4
        # Outside the window a sampled repeat is a cache hit again.
        chat(client, "later")
        time.sleep(1.5)
        chat(client, "later")
        assert len(ollama.generations_received()) == 5
        stats = client.get("/api/cache-stats", headers=auth).json()
    assert stats["response_cache"]["hits"] >= 4


def test_identical_requests_in_flight_together_share_one_generation(start_server, ollama):
    import threading

    ollama.configure(first_token_delay=0.4)
    server = start_server(API_KEYS=KEYS, CACHE_REGENERATE_WITHIN_SECONDS=300)
    with server.client() as client:
        threads = [threading.Thread(target=chat, args=(client, "together")) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(ollama.generations_received()) == 1


def test_cache_control_no_cache_and_no_store_on_every_surface(server, ollama):
    ask = {"model": MODEL, "messages": messages("directive"), "stream": False}
    with server.client() as client:
        client.post("/api/chat", json=ask)
        client.post("/api/chat", json=ask, headers={"Cache-Control": "no-cache"})  # fresh, stored
        assert len(ollama.generations_received()) == 2
        client.post("/api/chat", json=ask)  # a hit on the fresh answer
        assert len(ollama.generations_received()) == 2

        other = {"messages": messages("not kept"), "model": MODEL}
        client.post("/api/chat-optimized", json=other, headers={"Cache-Control": "no-store"})
        client.post("/api/chat-optimized", json=other)  # nothing was stored: generated again
        assert len(ollama.generations_received()) == 4
        client.post("/api/chat-optimized", json=other)
        assert len(ollama.generations_received()) == 4

        openai = {"model": MODEL, "messages": messages("openai directive")}
        client.post("/v1/chat/completions", json=openai)
        client.post("/v1/chat/completions", json=openai, headers={"Cache-Control": "no-cache"})
        assert len(ollama.generations_received()) == 6
