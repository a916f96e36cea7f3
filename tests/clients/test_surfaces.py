"""The other endpoints Ollama serves for clients, with the official clients: OpenAI's Responses,
completions, embeddings (float and base64) and model lookup, the legacy /api/embeddings, and the
errors of each surface in its own shape. Each case runs against the emulator and through the gateway."""

from __future__ import annotations

import base64
import json
import struct
import threading
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import openai
import pytest

from tests.clients.conftest import EMBED_MODEL, MODEL, THINKING_TOOLS_MODEL, WEATHER_TOOL

if TYPE_CHECKING:
    from tests.clients.conftest import Target

RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": WEATHER_TOOL["function"]["parameters"],
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


def test_responses_plain(target: Target) -> None:
    r = target.openai().responses.create(model=MODEL, input="Tell me a story", instructions="Be brief.")
    assert r.status == "completed" and r.output_text == target.upstream_reply()
    assert r.previous_response_id is None and r.instructions == "Be brief."
    assert target.last_generation().body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_responses_stream_event_sequence(target: Target) -> None:
    with target.openai().responses.stream(model=THINKING_TOOLS_MODEL, input="Tell me a story") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    thoughts = target.ollama.settings.think_token_count
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.reasoning_summary_text.delta"] * thoughts,
        "response.reasoning_summary_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 8,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == target.upstream_reply()
    assert final.output[0].type == "reasoning"


def test_responses_tools_round_trip(target: Target) -> None:
    client = target.openai()
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[RESPONSES_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.call_id.startswith("call_")
    assert (call.name, json.loads(call.arguments)) == target.upstream_tool_call()
    follow = client.responses.create(
        model=MODEL,
        tools=[RESPONSES_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"},
        ],
    )
    sent = target.last_generation().body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call.call_id}
    assert follow.output_text == target.upstream_reply()


def test_completions(target: Target) -> None:
    client = target.openai()
    whole = client.completions.create(model=MODEL, prompt="Once upon a time")
    assert whole.object == "text_completion" and whole.choices[0].text == target.upstream_reply()
    parts = list(client.completions.create(model=MODEL, prompt="Once upon a time", stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text


def test_embeddings_float_and_base64(target: Target) -> None:
    client = target.openai()
    floats = client.embeddings.create(model=EMBED_MODEL, input=["one", "two"])
    encoded = client.embeddings.create(model=EMBED_MODEL, input=["one", "two"], encoding_format="base64")
    assert len(floats.data) == 2 and floats.data[0].embedding != floats.data[1].embedding
    # base64 is the same vectors as little-endian float32s.
    for encoded_item, plain in zip(encoded.data, floats.data, strict=True):
        assert isinstance(encoded_item.embedding, str)
        decoded = struct.unpack(f"<{len(plain.embedding)}f", base64.b64decode(encoded_item.embedding))
        assert list(decoded) == pytest.approx(plain.embedding, rel=1e-6)


def test_models_retrieve_and_a_missing_one(target: Target) -> None:
    client = target.openai()
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nosuch:1b")
    assert missing.value.status_code == 404


def test_legacy_embeddings(target: Target) -> None:
    one = httpx.post(f"{target.url}/api/embeddings", json={"model": EMBED_MODEL, "prompt": "one"}, timeout=30)
    two = httpx.post(f"{target.url}/api/embeddings", json={"model": EMBED_MODEL, "prompt": "two"}, timeout=30)
    assert one.status_code == 200 and one.json()["embedding"] != two.json()["embedding"]


def test_anthropic_errors(target: Target) -> None:
    client = target.anthropic()
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nosuch:1b", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body["error"]["type"] == "invalid_request_error"


def test_anthropic_stream_event_sequence_with_a_tool_call(target: Target) -> None:
    with target.anthropic().messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Weather?"}], tools=[ANTHROPIC_TOOL]
    ) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert kinds == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "input_json_delta"),
        ("input_json", None),  # the SDK's own event for the parsed partial JSON
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert final.stop_reason == "tool_use" and final.content[0].input == target.upstream_tool_call()[1]


def test_gateway_identical_concurrent_messages_reach_the_upstream_once_and_replay_the_same_events(
    target: Target,
) -> None:
    if not target.via_gateway:
        pytest.skip("a property of the gateway (the emulator generates each request)")
    target.ollama.configure(first_token_delay=0.3)
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "together"}],
        "stream": True,
    }
    streams: list[list[str]] = []

    def ask() -> None:
        with httpx.stream("POST", f"{target.url}/v1/messages", json=body, timeout=30) as r:
            streams.append([line[7:] for line in r.iter_lines() if line.startswith("event: ")])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(target.generations()) == 1
    ask()  # a cache hit: the same event sequence
    assert len(target.generations()) == 1
    assert len(streams) == 4 and all(s == streams[0] for s in streams)
    assert streams[0][0] == "message_start" and streams[0][-1] == "message_stop"


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/v1/messages", {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}, "anthropic"),
        ("/v1/responses", {"input": "x"}, "openai"),
        ("/v1/completions", {"prompt": "x"}, "openai"),
        ("/v1/embeddings", {"input": "x"}, "openai"),
        ("/api/embeddings", {"prompt": "x"}, "ollama"),
    ],
)
def test_each_surface_answers_errors_in_its_own_shape(
    target: Target, path: str, body: dict, shape: str
) -> None:
    unknown = httpx.post(f"{target.url}{path}", json={**body, "model": "nosuch:1b"}, timeout=30)
    bad = httpx.post(f"{target.url}{path}", content=b'{"model": ', timeout=30)
    assert unknown.status_code == 404 and bad.status_code == 400
    for r in (unknown, bad):
        error = r.json()
        if shape == "anthropic":
            assert error["type"] == "error" and error["error"]["message"]
        elif shape == "openai":
            assert error["error"]["message"] and "type" in error["error"]
        else:
            assert isinstance(error["error"], str) and error["error"]
