"""The emulator's scheduler, as server/sched.go behaves: loads, reloads on runner options,
max_loaded_models evictions, per-model parallelism and the one-at-a-time models."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import httpx
import ollama as ollama_sdk
import pytest

from tests.fake_ollama import ALL_MODELS, FakeOllama, reply_tokens
from tests.helpers import wait_for

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def _full() -> Iterator[FakeOllama]:
    with FakeOllama(models=ALL_MODELS) as fake:
        yield fake


@pytest.fixture
def emu(_full: FakeOllama) -> Iterator[FakeOllama]:
    _full.reset()
    yield _full
    _full.reset()


@pytest.fixture
def client(emu: FakeOllama) -> ollama_sdk.Client:
    return ollama_sdk.Client(host=emu.url)


def chat(emu: FakeOllama, model: str, text: str = "hello", **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": False, **extra}
    r = httpx.post(f"{emu.url}/api/chat", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def test_loads_are_counted_and_a_loaded_model_is_reused(emu):
    first = chat(emu, "llama3.2:1b")
    again = chat(emu, "llama3.2:1b", "again")
    stats = emu.stats()
    assert stats["model_loads"] == 1 and stats["loaded"] == ["llama3.2:1b"]
    assert first["load_duration"] > 0 and "load_duration" not in again


def test_max_loaded_models_unloads_by_duration_then_name(emu, client):
    emu.configure(max_loaded_models=2)
    chat(emu, "llama3.2:1b", keep_alive="10m")
    chat(emu, "qwen2.5:0.5b", keep_alive="5m")
    chat(emu, "qwen3:0.6b", think=False)  # a third model: the shortest keep_alive (qwen2.5) goes
    stats = emu.stats()
    assert stats["model_loads"] == 3 and stats["model_unloads"] == 1 and stats["evictions"] == 1
    assert sorted(m.model for m in client.ps().models) == ["llama3.2:1b", "qwen3:0.6b"]


def test_an_eviction_waits_for_the_busy_runner(emu):
    emu.configure(max_loaded_models=1, first_token_delay=0.3, token_count=2)
    done: dict[str, float] = {}

    def run(model: str) -> None:
        chat(emu, model, model)
        done[model] = time.monotonic()

    first = threading.Thread(target=run, args=("llama3.2:1b",))
    first.start()
    deadline = time.monotonic() + 5
    while not emu.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    run("qwen2.5:0.5b")
    first.join()
    first_record, second_record = emu.generations_received()
    assert second_record.model == "qwen2.5:0.5b"
    assert second_record.at - first_record.at >= 0.3  # it started only once the first had finished
    assert emu.stats()["loaded"] == ["qwen2.5:0.5b"] and emu.stats()["evictions"] == 1


def test_runner_option_changes_reload(emu):
    chat(emu, "llama3.2:1b")
    chat(
        emu, "llama3.2:1b", options={"num_gpu": -1, "temperature": 0.2}
    )  # no reload: num_gpu < 0, not runner
    assert emu.stats()["reloads"] == 0
    chat(emu, "llama3.2:1b", options={"num_ctx": 8192})
    chat(emu, "llama3.2:1b", options={"num_ctx": 8192, "num_thread": 4})
    chat(emu, "llama3.2:1b", options={"num_ctx": 8192, "num_thread": 4, "use_mmap": False})
    chat(emu, "llama3.2:1b", options={"num_ctx": 8192, "num_thread": 4, "use_mmap": False}, shift=False)
    stats = emu.stats()
    assert stats["reloads"] == 4 and stats["model_loads"] == 5 and stats["model_unloads"] == 4
    got = [g.runner_options for g in emu.generations_received()]
    assert [g["num_ctx"] for g in got] == [4096, 4096, 8192, 8192, 8192, 8192]
    assert got[3]["num_thread"] == 4 and got[4]["use_mmap"] is False
    assert stats["runners"]["llama3.2:1b"]["options"]["num_batch"] == 512


def test_a_reload_waits_for_the_running_generation(emu):
    emu.configure(token_delay=0.05, token_count=5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(chat, emu, "llama3.2:1b", "slow")
        while not emu.stats()["in_flight"]:
            time.sleep(0.005)
        bigger = pool.submit(chat, emu, "llama3.2:1b", "big", options={"num_ctx": 16384})
        slow.result(), bigger.result()
    order = [g.runner_options["num_ctx"] for g in emu.generations_received()]
    assert order == [4096, 16384] and emu.stats()["reloads"] == 1


def test_vision_models_get_at_least_2048_context(emu):
    chat(emu, "gemma3:4b", options={"num_ctx": 512})
    assert emu.stats()["runners"]["gemma3:4b"]["options"]["num_ctx"] == 2048


def test_parallel_is_per_model(emu):
    emu.configure(parallel=2, first_token_delay=0.4, token_count=2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(chat, emu, m, f"q{i}") for i in range(3) for m in ("llama3.2:1b", "qwen2.5:0.5b")]
        [j.result() for j in jobs]
    stats = emu.stats()
    assert stats["max_in_flight_by_model"] == {"llama3.2:1b": 2, "qwen2.5:0.5b": 2}
    assert stats["max_in_flight"] == 6  # all accepted at once, as before


@pytest.mark.parametrize("parallel", [0, 4])
def test_one_at_a_time_architectures_serialise(emu, parallel):
    emu.configure(parallel=parallel, first_token_delay=0.3, token_count=2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = [
            pool.submit(chat, emu, m, f"q{i}")
            for i in range(3)
            for m in ("llama3.2-vision:11b", "llama3.2:1b")
        ]
        [j.result() for j in jobs]
    stats = emu.stats()
    assert stats["max_in_flight_by_model"]["llama3.2-vision:11b"] == 1
    assert stats["max_in_flight_by_model"]["llama3.2:1b"] == 3
    assert stats["runners"]["llama3.2-vision:11b"]["parallel"] == 1


def test_embedding_models_serialise(emu, client):
    emu.configure(embed_delay=0.03)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [
            pool.submit(client.embed, model="nomic-embed-text", input=[f"text {i}", "more"]) for i in range(4)
        ]
        assert all(len(j.result().embeddings) == 2 for j in jobs)
    stats = emu.stats()
    assert stats["max_in_flight_by_model"] == {"nomic-embed-text:latest": 1} and stats["embeddings"] == 4
    assert stats["runners"]["nomic-embed-text:latest"]["options"]["num_batch"] == 2048


def test_keep_alive_zero_unloads_after_the_request(emu, client):
    chat(emu, "llama3.2:1b", keep_alive=0)
    # As in Ollama, the runner is released just after the response ends: a loaded machine can read
    # the stats in between.
    wait_for(lambda: emu.stats()["loaded"] == [], timeout=2, what="the runner to unload")
    assert emu.stats()["model_unloads"] == 1
    chat(emu, "llama3.2:1b", keep_alive=-1)
    chat(emu, "llama3.2:1b", "no keep_alive keeps the runner's")
    assert client.ps().models[0].expires_at.year > 2200


def test_idle_runners_expire(emu):
    chat(emu, "llama3.2:1b", keep_alive="100ms")
    time.sleep(0.2)
    assert emu.stats()["loaded"] == [] and emu.stats()["model_unloads"] == 1


def test_load_delay_is_felt_once(emu):
    emu.configure(load_delay=0.4)
    started = time.monotonic()
    first = chat(emu, "llama3.2:1b")
    middle = time.monotonic()
    chat(emu, "llama3.2:1b", "second")
    assert middle - started >= 0.4 and time.monotonic() - middle < 0.3
    assert first["load_duration"] >= 400_000_000


def test_three_emulators_with_different_models_and_speeds():
    specs = [
        (["llama3.2:1b"], 0.0),
        (["qwen3:0.6b", "nomic-embed-text:latest"], 0.05),
        ([{"name": "tiny:1m", "capabilities": ["completion"], "family": "llama"}], 0.12),
    ]
    fakes = [FakeOllama(models=models, token_delay=delay, token_count=5).start() for models, delay in specs]
    try:
        timings = []
        for fake, (models, _) in zip(fakes, specs, strict=True):
            client = ollama_sdk.Client(host=fake.url)
            names = [m if isinstance(m, str) else m["name"] for m in models]
            assert [m.model for m in client.list().models] == names
            started = time.monotonic()
            r = client.chat(model=names[0], messages=USER, think=False if "qwen3" in names[0] else None)
            timings.append(time.monotonic() - started)
            assert r.message.content == "".join(reply_tokens(fake.requests[-1].body, 5))
            with pytest.raises(ollama_sdk.ResponseError):
                client.chat(model="deepseek-r1:8b", messages=USER)
        assert timings[0] < timings[1] < timings[2]
    finally:
        for fake in fakes:
            fake.stop()


def test_busy_when_the_queue_is_full(emu):
    emu.configure(parallel=1, max_queue=1, first_token_delay=0.6, token_count=2)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = pool.submit(chat, emu, "llama3.2:1b", "one")
        while not emu.stats()["in_flight"]:
            time.sleep(0.005)
        waiting = pool.submit(chat, emu, "llama3.2:1b", "two")
        while not emu.stats()["waiting"]:
            time.sleep(0.005)
        r = httpx.post(f"{emu.url}/api/chat", json={"model": "llama3.2:1b", "messages": USER})
        running.result(), waiting.result()
    assert r.status_code == 503
    assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
