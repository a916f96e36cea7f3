"""The emulator is only worth its tests if it speaks Ollama's wire format: the official client proves it."""

from __future__ import annotations

import json
import time

import httpx
import ollama as ollama_sdk
import pytest

from tests.fake_ollama import BUSY_MESSAGE, FakeOllama, reply_tokens

MODEL = "llama3.2:1b"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def client(ollama: FakeOllama) -> ollama_sdk.Client:
    return ollama_sdk.Client(host=ollama.url)


def test_official_client_chat_gets_the_deterministic_reply(client, ollama):
    response = client.chat(model=MODEL, messages=MESSAGES, stream=False)
    expected = "".join(reply_tokens({"model": MODEL, "messages": MESSAGES, "stream": False}, 8))
    assert response.message.role == "assistant"
    assert response.message.content == expected
    assert response.done is True and response.done_reason == "stop"
    assert response.eval_count == 8 and response.prompt_eval_count == 5
    assert response.total_duration > 0 and response.eval_duration > 0


def test_official_client_streams_chat_token_by_token(client, ollama):
    chunks = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    assert [c.done for c in chunks] == [False] * 8 + [True]
    text = "".join(c.message.content for c in chunks)
    assert text == "".join(reply_tokens({"model": MODEL, "messages": MESSAGES}, 8))
    final = chunks[-1]
    assert final.done_reason == "stop" and final.eval_count == 8
    assert final.created_at.endswith("Z")
    assert ollama.calls_for({"model": MODEL, "messages": MESSAGES}) == 1


def test_official_client_generate_and_stream(client, ollama):
    whole = client.generate(model=MODEL, prompt="Hello", stream=False)
    parts = list(client.generate(model=MODEL, prompt="Hello", stream=True))
    assert whole.response == "".join(p.response for p in parts)
    assert parts[-1].done and parts[-1].context
    assert ollama.stats()["generations"] == 2


def test_official_client_list_ps_show(client, ollama):
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:1b", "deepseek-r1:8b", "qwen2.5:0.5b"]
    assert client.ps().models == []
    client.chat(model=MODEL, messages=MESSAGES, keep_alive="10m")
    loaded = client.ps().models
    assert [m.model for m in loaded] == [MODEL] and loaded[0].expires_at is not None
    shown = client.show(MODEL)
    assert shown.details.family == "llama" and "completion" in shown.capabilities


def test_empty_chat_loads_then_keep_alive_zero_unloads(client, ollama):
    loaded = client.chat(model=MODEL, messages=[], keep_alive=-1)
    assert loaded.done_reason == "load" and [m.model for m in client.ps().models] == [MODEL]
    unloaded = client.chat(model=MODEL, messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and client.ps().models == []
    assert ollama.stats()["generations"] == 0


def test_unknown_model_is_404_as_ollama_says(client, ollama):
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="nope:1b", messages=MESSAGES)
    assert err.value.status_code == 404
    assert err.value.error == "model 'nope:1b' not found"


def test_bare_numeric_keep_alive_string_is_rejected_like_ollama(ollama):
    r = httpx.post(f"{ollama.url}/api/chat", json={"model": MODEL, "messages": MESSAGES, "keep_alive": "300"})
    assert r.status_code == 400 and "missing unit" in r.json()["error"]


def test_busy_is_503_with_ollamas_message(client, ollama):
    ollama.configure(fault="busy")
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model=MODEL, messages=MESSAGES)
    assert err.value.status_code == 503 and err.value.error == BUSY_MESSAGE


def test_error_line_mid_stream_arrives_on_a_200(ollama):
    ollama.configure(fault="error_line", fault_after=2)
    with httpx.stream("POST", f"{ollama.url}/api/chat", json={"model": MODEL, "messages": MESSAGES}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) == 3 and "error" in lines[-1]


def test_num_predict_truncates_with_done_reason_length(client):
    response = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 3})
    assert response.done_reason == "length" and response.eval_count == 3


def test_parallel_limit_and_counters(ollama):
    ollama.configure(parallel=1, token_delay=0.05, token_count=3)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bodies = [
            {"model": MODEL, "messages": [{"role": "user", "content": str(i)}], "stream": False}
            for i in range(4)
        ]
        list(pool.map(lambda b: httpx.post(f"{ollama.url}/api/chat", json=b, timeout=10).json(), bodies))
    stats = ollama.stats()
    assert stats["generations"] == 4 and stats["completed"] == 4
    assert stats["max_in_flight"] == 4  # accepted concurrently...
    assert stats["in_flight"] == 0


def test_client_disconnect_stops_generation(ollama):
    ollama.configure(token_delay=0.2, token_count=50)
    with httpx.stream("POST", f"{ollama.url}/api/chat", json={"model": MODEL, "messages": MESSAGES}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 2
    while ollama.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = ollama.stats()
    assert stats["in_flight"] == 0 and stats["aborted"] == 1, stats


def test_refuse_closes_the_port_and_reset_reopens_it(ollama):
    ollama.configure(fault="refuse")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ollama.url}/api/version")
    ollama.reset()
    assert httpx.get(f"{ollama.url}/api/version").json()["version"]


def test_standalone_module_serves_the_chosen_models():
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tests.fake_ollama", "--port", str(port), "--models", "all"]
    proc = subprocess.Popen(
        [*command, "--token-count", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith(f"Ollama emulator on http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                names = [m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]]
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert "nomic-embed-text:latest" in names and "qwen3:0.6b" in names
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}, timeout=10)
        assert r.json()["usage"]["completion_tokens"] == 3
        config = httpx.post(f"{url}/_emulator/config", json={"max_loaded_models": 1}).json()["settings"]
        assert config["max_loaded_models"] == 1
        assert httpx.get(f"{url}/_emulator/stats").json()["generations"] == 1
    finally:
        proc.terminate()
        proc.wait(10)
