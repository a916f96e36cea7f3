"""Fair between people, through daphne: the fair share, per-owner limits, quotas and usage, the
Ollama-aware admission rules, and the end user a trusted front-end names."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from tests.fake_ollama.catalogue import build_models
from tests.helpers import MODEL, messages, wait_for, wait_status

ALICE, BOB = "cbk_alice_fair_000000001", "cbk_bob_fair_000000002"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"
ADMIN = "fair-admin-token"
EMBED = "nomic-embed-text:latest"


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def submit(client: httpx.Client, key: str, text: str, **fields: Any) -> httpx.Response:
    return client.post("/api/chat-queue", json={"messages": messages(text), **fields}, headers=as_(key))


def usage(client: httpx.Client) -> dict[str, dict[str, Any]]:
    report = client.get("/api/usage", params={"window": "hour"}, headers={"X-Admin-Token": ADMIN}).json()
    return {entry["owner"]: entry for entry in report["owners"]}


@pytest.mark.parametrize("slots", [1, 2])
def test_a_late_owner_starts_at_the_next_free_slot_not_after_the_backlog(start_server, ollama, slots):
    ollama.configure(first_token_delay=0.1, token_count=4)
    server = start_server(API_KEYS=KEYS, QUEUE_MAX_CONCURRENT=slots, BATCH_MAX_BATCH_SIZE=slots)
    with server.client() as client:
        for i in range(100):
            assert submit(client, ALICE, f"backlog {i}").status_code == 202
        wait_for(lambda: ollama.stats()["in_flight"] == slots, what="alice's generations to run")
        submitted = time.monotonic()
        assert submit(client, BOB, "one for bob").status_code == 202
        wait_for(lambda: any("one for bob" in str(g.body) for g in ollama.generations_received()), timeout=10)
    later = [str(g.body) for g in ollama.generations_received() if g.at > submitted]
    bob = next(i for i, body in enumerate(later) if "one for bob" in body)
    # A slot that frees while Bob's request is on its way (before it is committed) goes to Alice: that
    # is at most one of hers per slot ahead of him, never the other 90-odd of her backlog.
    assert bob <= slots, [body[body.find("backlog") :][:12] for body in later[: bob + 1]]


def fill_and_measure(start_server, ollama, tmp_path: Path, weights: str) -> float:
    ollama.configure(first_token_delay=0.02, token_delay=0.01, token_count=10)
    server = start_server(
        API_KEYS=KEYS, ADMIN_TOKEN=ADMIN, QUEUE_MAX_CONCURRENT=1, QUEUE_MAX_QUEUE_SIZE=1000,
        FAIRNESS_HALF_LIFE_SECONDS=5, CONFIG_PATH=config(tmp_path, weights),
    )  # fmt: skip
    with server.client() as client:
        # Alice submits three times as much as Bob: both keep the GPU saturated.
        for i in range(60):
            for j in range(3):
                submit(client, ALICE, f"a {i} {j}")
            submit(client, BOB, f"b {i}")
        time.sleep(10)  # both still have a backlog: the GPU stayed saturated throughout
        figures = usage(client)
    return figures["alice"]["gpu_seconds"] / figures["bob"]["gpu_seconds"]


def test_owners_submitting_at_three_to_one_receive_equal_gpu_time(start_server, ollama, tmp_path):
    ratio = fill_and_measure(start_server, ollama, tmp_path, "")
    assert ratio == pytest.approx(1.0, rel=0.10), f"alice:bob GPU seconds {ratio:.3f}"


def test_weights_two_to_one_give_twice_the_gpu_time(start_server, ollama, tmp_path):
    ratio = fill_and_measure(start_server, ollama, tmp_path, "[owners.alice]\nweight = 2\n")
    assert ratio == pytest.approx(2.0, rel=0.10), f"alice:bob GPU seconds {ratio:.3f}"


def test_pending_and_in_flight_limits_are_exact_under_concurrent_submits(start_server, ollama, tmp_path):
    ollama.configure(first_token_delay=0.3)
    server = start_server(
        API_KEYS=KEYS, QUEUE_MAX_CONCURRENT=5, BATCH_MAX_BATCH_SIZE=5, QUEUE_EMBEDDED_WORKER="false",
        CONFIG_PATH=config(tmp_path, "[owners.alice]\nmax_pending = 10\nmax_in_flight = 2\n"),
    )  # fmt: skip
    codes: list[tuple[int, str]] = []

    def one(i: int) -> None:
        with server.client() as client:
            r = submit(client, ALICE, f"limit {i}")
            codes.append((r.status_code, r.json().get("code", "") if r.status_code != 202 else ""))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes).count((202, "")) == 10
    assert sorted(codes).count((429, "owner_pending_limit")) == 40
    # Now a worker: never more than two of alice's at Ollama at once.
    worker = start_server(
        API_KEYS=KEYS, QUEUE_MAX_CONCURRENT=5, BATCH_MAX_BATCH_SIZE=5,
        CONFIG_PATH=config(tmp_path, "[owners.alice]\nmax_pending = 10\nmax_in_flight = 2\n"),
    )  # fmt: skip
    wait_for(lambda: ollama.stats()["completed"] == 10, timeout=30, what="the ten to complete")
    assert ollama.stats()["max_in_flight"] == 2
    worker.close()


def test_quota_is_exact_under_concurrency_and_usage_matches_ollamas_figures(start_server, ollama, tmp_path):
    # Slow enough generations that all 30 are admitted before the quota runs out (about 6 fit).
    ollama.configure(first_token_delay=1.0, token_count=8)
    server = start_server(
        API_KEYS=KEYS, ADMIN_TOKEN=ADMIN, QUEUE_MAX_CONCURRENT=2, BATCH_MAX_BATCH_SIZE=2,
        CONFIG_PATH=config(tmp_path, "[owners.alice]\ntokens_per_hour = 100\n"),
    )  # fmt: skip
    with server.client(headers=as_(ALICE)) as client:
        ids = [submit(client, ALICE, f"quota {i}").json()["request_id"] for i in range(30)]
        done = [wait_status(client, i, ("completed", "failed"), timeout=30) for i in ids]
        refused = submit(client, ALICE, "after")
        figures = usage(client)["alice"]
    completed = [d for d in done if d["status"] == "completed"]
    failed = [d for d in done if d["status"] == "failed"]
    assert failed and all(d["error"]["code"] == "quota_exceeded" for d in failed)
    assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # What Ollama reported, summed, is what was charged.
    reported = sum(
        d["result"]["metrics"]["prompt_eval_count"] + d["result"]["metrics"]["eval_count"] for d in completed
    )
    assert figures["tokens"] == reported and figures["requests"] == len(completed)
    per_generation = max(
        d["result"]["metrics"]["prompt_eval_count"] + d["result"]["metrics"]["eval_count"] for d in completed
    )
    # Over the quota by at most what was already running when it ran out (two slots).
    assert 100 <= reported <= 100 + 2 * per_generation, reported


def test_a_cache_hit_costs_no_gpu_time_and_dedup_charges_once(start_server, ollama):
    ollama.configure(first_token_delay=0.3)
    server = start_server(API_KEYS=KEYS, ADMIN_TOKEN=ADMIN, SHARED_CACHE="true")
    body = {"model": MODEL, "messages": messages("shared"), "stream": False}
    with server.client() as client:
        threads = [
            threading.Thread(target=lambda k=key: client.post("/api/chat", json=body, headers=as_(k)))
            for key in (ALICE, BOB)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.post("/api/chat", json=body, headers=as_(BOB))  # a cache hit
        figures = usage(client)
    assert len(ollama.generations_received()) == 1
    charged = [owner for owner, entry in figures.items() if entry["requests"]]
    assert len(charged) == 1  # the generation two requests shared is charged once
    assert sum(entry["cache_hits"] for entry in figures.values()) == 1
    assert figures["bob"]["gpu_seconds"] == 0 or charged == ["bob"]


def test_an_embedding_model_is_never_sent_two_requests_at_once(start_server, ollama):
    ollama.models.update(build_models([EMBED]))
    ollama.configure(embed_delay=0.1)
    server = start_server(QUEUE_MAX_CONCURRENT=4, BATCH_MAX_BATCH_SIZE=4)

    def embed(i: int) -> None:
        with server.client() as client:
            assert client.post("/api/embed", json={"model": EMBED, "input": f"text {i}"}).status_code == 200

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ollama.stats()["max_received_by_model"][EMBED] == 1
    ollama.models.pop(EMBED, None)


def test_a_pinned_num_ctx_reaches_the_upstream_whatever_the_client_sent(start_server, ollama, tmp_path):
    server = start_server(CONFIG_PATH=config(tmp_path, f'[models."{MODEL}"]\nnum_ctx = 2048\n'))
    with server.client() as client:
        r = client.post(
            "/api/chat",
            json={
                "model": MODEL,
                "messages": messages("big"),
                "options": {"num_ctx": 131072},
                "stream": False,
            },
        )
    assert r.status_code == 200 and r.headers["X-Gateway-Adjusted"] == "num_ctx=2048 (asked 131072)"
    assert ollama.generations_received()[0].body["options"]["num_ctx"] == 2048


def swaps(start_server, ollama, swap_after: float) -> int:
    ollama.configure(max_loaded_models=1, load_delay=0.05, first_token_delay=0.02, token_count=4)
    server = start_server(
        API_KEYS=KEYS, QUEUE_MAX_CONCURRENT=1, QUEUE_EMBEDDED_WORKER="false",
        FAIRNESS_MODEL_SWAP_AFTER_SECONDS=swap_after,
    )  # fmt: skip
    with server.client() as client:
        for i in range(10):  # two owners, two models, interleaved
            submit(client, ALICE, f"m1 {i} {swap_after}", model=MODEL)
            submit(client, BOB, f"m2 {i} {swap_after}", model="qwen2.5:0.5b")
    server.close()
    loads_before = ollama.stats()["model_loads"]
    worker = start_server(API_KEYS=KEYS, QUEUE_MAX_CONCURRENT=1, FAIRNESS_MODEL_SWAP_AFTER_SECONDS=swap_after)
    wait_for(lambda: ollama.stats()["completed"] == 20, timeout=60, what="the twenty to complete")
    worker.close()
    return ollama.stats()["model_loads"] - loads_before


def test_model_affinity_swaps_less_than_fifo(start_server, ollama):
    fifo = swaps(start_server, ollama, 0)
    ollama.reset()
    affine = swaps(start_server, ollama, 60)
    assert affine < fifo, f"model loads: FIFO {fifo}, with affinity {affine}"


def ttft_behind_a_title_call(start_server, ollama, head_start: float) -> float:
    """Open WebUI: a non-streaming title call, then the user's stream, one slot busy meanwhile."""
    ollama.configure(first_token_delay=0.3, token_delay=0.02, token_count=10)
    server = start_server(QUEUE_MAX_CONCURRENT=1, FAIRNESS_STREAMING_HEAD_START_SECONDS=head_start)
    with server.client() as client:
        occupy = {"messages": messages(f"occupies the slot {head_start}")}
        busy = client.post("/api/chat-queue", json=occupy).json()
        wait_for(lambda: ollama.stats()["in_flight"] == 1, what=f"the slot to be busy ({head_start})")
        title_call = {"model": MODEL, "messages": messages(f"write a title {head_start}"), "stream": False}
        title = threading.Thread(target=lambda: client.post("/api/chat", json=title_call))
        title.start()
        time.sleep(0.1)  # the title call is queued first
        started = time.monotonic()
        with client.stream(
            "POST", "/api/chat", json={"model": MODEL, "messages": messages(f"the question {head_start}")}
        ) as r:
            lines = r.iter_lines()
            next(lines)
            ttft = time.monotonic() - started
            list(lines)
        title.join()
        wait_status(client, busy["request_id"])
    server.close()
    return ttft


def test_the_users_stream_no_longer_waits_for_the_title_call(start_server, ollama):
    before = ttft_behind_a_title_call(start_server, ollama, 0)
    ollama.reset()
    after = ttft_behind_a_title_call(start_server, ollama, 15)
    # The title call's generation takes ~0.5 s: with the head start the stream goes first.
    assert after < before - 0.3, f"time to first token: {before:.2f} s before, {after:.2f} s after"


def test_a_forwarded_user_is_an_owner_only_when_the_sender_is_trusted(start_server, ollama, tmp_path):
    server = start_server(
        API_KEYS=KEYS, ADMIN_TOKEN=ADMIN, FAIRNESS_TRUSTED_USER_HEADER="X-OpenWebUI-User-Id",
        CONFIG_PATH=config(tmp_path, "[owners.alice]\nforward_user = true\n"),
    )  # fmt: skip
    with server.client() as client:
        for key, user in ((ALICE, "u-1"), (ALICE, "u-2"), (BOB, "u-3")):
            client.post(
                "/api/chat",
                json={"model": MODEL, "messages": messages(f"hi {user}"), "stream": False},
                headers={**as_(key), "X-OpenWebUI-User-Id": user},
            )
        owners = set(usage(client))
    # alice may name its users; bob may not: its header is ignored.
    assert owners == {"alice/u-1", "alice/u-2", "bob"}
