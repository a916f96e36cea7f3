"""The official ``ollama`` Python client, against the emulator and through the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.clients.conftest import (
    EMBED_MODEL,
    MODEL,
    PNG_B64,
    THINKING_MODEL,
    THINKING_TOOLS_MODEL,
    VISION_MODEL,
    WEATHER_TOOL,
    CityWeather,
)

if TYPE_CHECKING:
    from tests.clients.conftest import Target

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


def test_chat(target: Target) -> None:
    reply = target.ollama_client().chat(model=MODEL, messages=QUESTION, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content == target.upstream_reply()
    assert reply.done and reply.done_reason == "stop" and reply.eval_count == 8


def test_stream(target: Target) -> None:
    chunks = list(target.ollama_client().chat(model=MODEL, messages=QUESTION, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == target.upstream_reply()
    assert len([c for c in chunks if c.message.content]) == 8
    assert chunks[-1].done and chunks[-1].done_reason == "stop"


def test_same_request_twice(target: Target) -> None:
    client = target.ollama_client()
    first = client.chat(model=MODEL, messages=QUESTION, stream=False)
    again = client.chat(model=MODEL, messages=QUESTION, stream=False)
    assert again.message.content == first.message.content == target.upstream_reply()
    assert again.done and again.eval_count == first.eval_count
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_multi_turn(target: Target) -> None:
    history = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    reply = target.ollama_client().chat(model=MODEL, messages=history, stream=False)
    sent = target.last_generation().body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [(m["role"], m["content"]) for m in history]
    assert reply.message.content == target.upstream_reply()


def test_options_with_nulls_and_runner_options(target: Target) -> None:
    options: dict[str, Any] = {
        "temperature": None,
        "top_k": None,
        "seed": 7,
        "num_ctx": 4096,
        "num_thread": 2,
        "num_gpu": 0,
        "use_mmap": False,
        "use_mlock": True,  # gone from Ollama's options: ignored there
    }
    reply = target.ollama_client().chat(model=MODEL, messages=QUESTION, options=options, stream=False)
    assert reply.message.content == target.upstream_reply()
    sent = target.last_generation().body["options"]
    assert {k: sent.get(k) for k in ("seed", "num_ctx", "num_thread", "num_gpu", "use_mmap")} == {
        "seed": 7,
        "num_ctx": 4096,
        "num_thread": 2,
        "num_gpu": 0,
        "use_mmap": False,
    }


def test_structured_output(target: Target) -> None:
    schema = CityWeather.model_json_schema()
    reply = target.ollama_client().chat(model=MODEL, messages=QUESTION, format=schema, stream=False)
    parsed = CityWeather.model_validate_json(reply.message.content or "")
    assert target.last_generation().body["format"] == schema
    assert parsed.city


def test_tools_round_trip(target: Target) -> None:
    client = target.ollama_client()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=False)
    calls = first.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [target.upstream_tool_call()]

    messages += [first.message, {"role": "tool", "tool_name": "get_weather", "content": "22 degrees, sunny"}]
    final = client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=False)
    assert not final.message.tool_calls
    assert final.message.content == target.upstream_reply()
    sent = target.last_generation().body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2]["role"] == "tool" and sent[2]["content"] == "22 degrees, sunny"


def test_tools_streamed(target: Target) -> None:
    chunks = list(
        target.ollama_client().chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    calls = [call for c in chunks for call in (c.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [target.upstream_tool_call()]
    assert chunks[-1].done


def test_thinking(target: Target) -> None:
    reply = target.ollama_client().chat(model=THINKING_MODEL, messages=QUESTION, think=True, stream=False)
    assert reply.message.thinking == target.upstream_thinking()
    assert reply.message.content == target.upstream_reply()


def test_thinking_streamed(target: Target) -> None:
    chunks = list(
        target.ollama_client().chat(model=THINKING_MODEL, messages=QUESTION, think=True, stream=True)
    )
    thinking = "".join(c.message.thinking or "" for c in chunks)
    content = "".join(c.message.content or "" for c in chunks)
    assert (thinking, content) == (target.upstream_thinking(), target.upstream_reply())
    first_thought = next(i for i, c in enumerate(chunks) if c.message.thinking)
    first_text = next(i for i, c in enumerate(chunks) if c.message.content)
    assert first_thought < first_text


def test_image(target: Target) -> None:
    messages = [{"role": "user", "content": "What is in this picture?", "images": [PNG_B64]}]
    reply = target.ollama_client().chat(model=VISION_MODEL, messages=messages, stream=False)
    assert reply.message.content
    assert target.last_generation().body["messages"][0]["images"] == [PNG_B64]


def test_embed(target: Target) -> None:
    client = target.ollama_client()
    result = client.embed(model=EMBED_MODEL, input=["one", "two"])
    single = client.embed(model=EMBED_MODEL, input="one")
    assert len(result.embeddings) == 2 and result.embeddings[0] == single.embeddings[0]
    assert result.embeddings[0] != result.embeddings[1]


def test_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.ollama_client().chat(model=MODEL, messages=QUESTION, stream=True)
    first = next(iter(stream))
    assert first.message.content
    stream.close()
    target.wait_idle(1.0)
    assert target.ollama.stats()["aborted"] == 1


def test_generate(target: Target) -> None:
    whole = target.ollama_client().generate(model=MODEL, prompt="Hello", stream=False)
    assert whole.response == target.upstream_reply() and whole.done


def test_show_lists_capabilities(target: Target) -> None:
    shown = target.ollama_client().show(THINKING_MODEL)
    assert set(shown.capabilities or []) == {"completion", "thinking"}
    assert (shown.modelinfo or {})["general.architecture"] == "qwen3"


def test_thinking_then_tool_call(target: Target) -> None:
    reply = target.ollama_client().chat(
        model=THINKING_TOOLS_MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        think=True,
        stream=False,
    )
    assert reply.message.thinking == target.upstream_thinking()
    calls = reply.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [target.upstream_tool_call()]
