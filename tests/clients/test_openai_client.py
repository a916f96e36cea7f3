"""The official ``openai`` Python client on the OpenAI-compatible layer (``/v1``), against the emulator
and through the gateway."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.clients.conftest import (
    EMBED_MODEL,
    MODEL,
    PNG_B64,
    PNG_DATA_URL,
    THINKING_MODEL,
    VISION_MODEL,
    WEATHER_TOOL,
    CityWeather,
)

if TYPE_CHECKING:
    from tests.clients.conftest import Target

QUESTION: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]


def reasoning_of(message: Any) -> str | None:
    """Ollama's own field (``reasoning``), which the SDK keeps as an extra attribute."""
    return (message.model_extra or {}).get("reasoning")


def test_chat(target: Target) -> None:
    completion = target.openai().chat.completions.create(model=MODEL, messages=QUESTION)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == target.upstream_reply()
    assert completion.usage is not None and completion.usage.completion_tokens == 8


def test_stream(target: Target) -> None:
    stream = target.openai().chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == target.upstream_reply()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_same_request_twice(target: Target) -> None:
    client = target.openai()
    first = client.chat.completions.create(model=MODEL, messages=QUESTION)
    again = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert again.choices[0].message.content == first.choices[0].message.content == target.upstream_reply()
    assert again.choices[0].finish_reason == "stop"
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_multi_turn(target: Target) -> None:
    history: list[Any] = [
        {"role": "developer", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "Another one?"}]},
    ]
    completion = target.openai().chat.completions.create(model=MODEL, messages=history)
    assert completion.choices[0].message.content == target.upstream_reply()
    sent = target.last_generation().body["messages"]
    assert len(sent) == 4 and sent[2]["content"] == "Blue."


def test_null_parameters(target: Target) -> None:
    completion = target.openai().chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=None, top_p=None, max_tokens=None, seed=3
    )
    assert completion.choices[0].message.content == target.upstream_reply()


def test_structured_output(target: Target) -> None:
    completion = target.openai().chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "CityWeather", "schema": CityWeather.model_json_schema()},
        },
    )
    parsed = CityWeather.model_validate_json(completion.choices[0].message.content or "")
    assert parsed.city


def test_tools_round_trip(target: Target) -> None:
    client = target.openai()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        target.upstream_tool_call()
    ]
    assert calls[0].id

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "22 degrees, sunny"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == target.upstream_reply()
    assert not final.choices[0].message.tool_calls


def test_tools_streamed(target: Target) -> None:
    stream = target.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls if c.function and c.function.name] == ["get_weather"]
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert ("get_weather", json.loads(arguments)) == target.upstream_tool_call()
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_reasoning(target: Target) -> None:
    completion = target.openai().chat.completions.create(model=THINKING_MODEL, messages=QUESTION)
    message = completion.choices[0].message
    assert reasoning_of(message) == target.upstream_thinking()
    assert message.content == target.upstream_reply()


def test_reasoning_streamed(target: Target) -> None:
    stream = target.openai().chat.completions.create(model=THINKING_MODEL, messages=QUESTION, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(reasoning_of(d) or "" for d in deltas) == target.upstream_thinking()
    assert "".join(d.content or "" for d in deltas) == target.upstream_reply()


def test_image_url_part(target: Target) -> None:
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            ],
        }
    ]
    completion = target.openai().chat.completions.create(model=VISION_MODEL, messages=messages)
    assert completion.choices[0].message.content
    if target.via_gateway:  # the gateway speaks Ollama's native API upstream
        # As Ollama's own layer does: one native message per content part.
        sent = target.last_generation().body["messages"]
        assert [(m["content"], m.get("images")) for m in sent] == [
            ("What is in this picture?", None),
            ("", [PNG_B64]),
        ]


def test_embeddings(target: Target) -> None:
    result = target.openai().embeddings.create(model=EMBED_MODEL, input=["one", "two"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 2 and vectors[0] != vectors[1] and len(vectors[0]) > 0


def test_models(target: Target) -> None:
    ids = [m.id for m in target.openai().models.list()]
    assert MODEL in ids and THINKING_MODEL in ids


def test_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.openai().chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    target.wait_idle(1.0)
    assert target.ollama.stats()["aborted"] == 1
