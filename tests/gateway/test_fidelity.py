"""Everything Ollama says reaches the client, on every surface, through the queue, the fan-out and
the cache: thinking, tool calls (with their ids), logprobs; think as Ollama means it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fake_ollama import thinking_count, thinking_tokens
from tests.fake_ollama.catalogue import build_models
from tests.helpers import messages, sse_events, submit, wait_for

THINKER = "deepseek-r1:8b"  # the default model of the shipped configuration: it thinks
TOOLS = "llama3.2:1b"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(autouse=True)
def _thinking_tools_model(ollama):
    """The emulator's catalogue model that thinks and calls tools, for this module's tests."""
    added = build_models(["qwen3:0.6b"])
    ollama.models.update(added)
    yield
    for name in added:
        ollama.models.pop(name, None)


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_tool_calls_reach_the_client_and_a_cache_hit_repeats_the_same_ids(server, ollama):
    body = {"model": TOOLS, "messages": messages("Weather in Paris?"), "tools": [WEATHER], "stream": False}
    with server.client() as client:
        first = client.post("/api/chat", json=body).json()
        again = client.post("/api/chat", json=body).json()
    calls = first["message"]["tool_calls"]
    assert calls and calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert again["message"]["tool_calls"] == calls  # the same ids: replayed, not regenerated
    assert len(ollama.generations_received()) == 1


def test_thinking_is_streamed_and_replayed_chunk_for_chunk(server, ollama):
    body = {"model": THINKER, "messages": messages("Why?")}
    with server.client() as client:
        live = ndjson(client.post("/api/chat", json=body))
        replay = ndjson(client.post("/api/chat", json=body))

    def parts(chunks: list[dict]) -> list[tuple[str, str]]:
        return [(c["message"].get("thinking", ""), c["message"]["content"]) for c in chunks if not c["done"]]

    sent = ollama.generations_received()
    assert len(sent) == 1 and sent[0].think is True  # omitted: on, as Ollama sets it for this model
    thought = "".join(thinking_tokens(sent[0].body, thinking_count(True, ollama.settings.think_token_count)))
    assert "".join(t for t, _ in parts(live)) == thought
    assert parts(replay) == parts(live)
    assert live[-1]["done"] and replay[-1]["eval_count"] == live[-1]["eval_count"]


def test_think_omitted_and_true_share_an_entry_false_is_another(server, ollama):
    ask = {"model": THINKER, "messages": messages("Same?"), "stream": False}
    with server.client() as client:
        omitted = client.post("/api/chat", json=ask).json()
        explicit = client.post("/api/chat", json={**ask, "think": True}).json()
        off = client.post("/api/chat", json={**ask, "think": False}).json()
    assert explicit["message"] == omitted["message"] and omitted["message"]["thinking"]
    assert "thinking" not in off["message"]
    assert [g.think for g in ollama.generations_received()] == [True, False]


def test_think_on_a_model_that_cannot_is_ollamas_own_400(server, ollama):
    with server.client() as client:
        r = client.post("/api/chat", json={"model": TOOLS, "messages": messages("x"), "think": True})
    assert r.status_code == 400 and r.json() == {"error": f'"{TOOLS}" does not support thinking'}


def test_logprobs_pass_through(server, ollama):
    body = {"model": TOOLS, "messages": messages("p"), "logprobs": True, "top_logprobs": 2, "stream": False}
    with server.client() as client:
        answer = client.post("/api/chat", json=body).json()
    assert answer["logprobs"] and len(answer["logprobs"][0]["top_logprobs"]) == 2
    assert ollama.generations_received()[0].body["top_logprobs"] == 2


def test_chat_optimized_frames_carry_thinking_and_tool_calls(server, ollama):
    with server.client() as client:
        with client.stream(
            "POST", "/api/chat-optimized", json={"messages": messages("hm"), "model": THINKER, "stream": True}
        ) as r:
            frames = [data for kind, data in sse_events(r.iter_lines()) if kind == "message"]
        tools = client.post(
            "/api/chat-optimized", json={"messages": messages("Weather?"), "model": TOOLS, "tools": [WEATHER]}
        ).json()
    thinking = [f for f in frames if "thinking" in f]
    assert thinking and all("content" not in f for f in thinking)  # a thought is not an empty word
    assert set(frames[0]) == {"thinking", "done", "cached"}
    assert frames[-1]["done"] is True
    assert tools["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_first_thinking_frame_arrives_with_the_upstreams_first_chunk(start_server, ollama):
    """With the shipped default model (it thinks) the first frame is the first thought, as soon as
    the upstream sends it: no run of empty frames before a late first word."""
    ollama.configure(first_token_delay=0.3, token_delay=0.05)
    server = start_server(OLLAMA_MODEL=THINKER)
    with server.client() as client:
        started = time.monotonic()
        with client.stream(
            "POST", "/api/chat-optimized", json={"messages": messages("?"), "stream": True}
        ) as r:
            lines = r.iter_lines()
            _, first = next((k, d) for k, d in sse_events(lines) if k == "message")
            waited = time.monotonic() - started
            rest = [d for k, d in sse_events(lines) if k == "message"]
    assert first is not None and first.get("thinking") and "content" not in first
    assert waited < 0.3 + 0.25, f"first frame after {waited:.3f}s for a 0.3s upstream first chunk"
    assert not any(f.get("content") == "" for f in [first, *rest] if not f["done"])


def test_a_late_listener_gets_the_thinking_and_tool_calls_it_missed(server, ollama):
    ollama.configure(token_delay=0.05, think_token_count=10)
    with server.client() as client:
        request_id = submit(client, "late", model="qwen3:0.6b", tools=[WEATHER])["request_id"]
        wait_for(lambda: ollama.stats()["in_flight"] == 1, what="the generation to start")
        time.sleep(0.2)  # a few thoughts went by
        with client.stream("GET", "/api/chat-queue/stream", params={"requestId": request_id}) as r:
            frames = [d for k, d in sse_events(r.iter_lines()) if k == "message"]
    sent = ollama.generations_received()[0]
    thought = "".join(thinking_tokens(sent.body, thinking_count(True, 10)))
    assert "".join(f.get("thinking", "") for f in frames) == thought
    calls = [c for f in frames for c in f.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"


def test_concurrent_listeners_of_one_generation_see_the_same_tool_call_ids(server, ollama):
    ollama.configure(first_token_delay=0.3)
    body = {"model": TOOLS, "messages": messages("Weather in Rome?"), "tools": [WEATHER], "stream": False}
    answers: list[dict] = []

    def ask() -> None:
        with server.client() as client:
            answers.append(client.post("/api/chat", json=body).json())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {a["message"]["tool_calls"][0]["id"] for a in answers}
    assert len(answers) == 3 and len(ids) == 1 and len(ollama.generations_received()) == 1
