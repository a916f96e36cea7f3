"""The emulator's Anthropic-compatible /v1/messages against the official ``anthropic`` client, as
anthropic/anthropic.go and middleware/anthropic.go shape it."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.fake_ollama import (
    ALL_MODELS,
    MULTIMODAL_REFUSED,
    FakeOllama,
    reply_tokens,
    thinking_tokens,
    to_native,
)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


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
def claude(emu: FakeOllama) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.url, api_key="ollama", max_retries=0)


def native_of(emu: FakeOllama) -> dict:
    return emu.generations_received()[-1].body


def test_messages_create(claude, emu):
    body = {
        "model": "llama3.2:1b",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": USER,
        "stop_sequences": ["END"],
    }
    sampling = {"temperature": 0.5, "top_p": 0.9, "top_k": 20}  # this client no longer has them as arguments
    r = claude.messages.create(**body, extra_body=sampling)
    body = {**body, **sampling}
    path, native = to_native("/v1/messages", body)
    assert native == native_of(emu) and path == "/api/chat"
    assert native["messages"][0] == {"role": "system", "content": "Be brief."}
    assert native["options"] == {
        "num_predict": 64,
        "stop": ["END"],
        "temperature": 0.5,
        "top_k": 20,
        "top_p": 0.9,
    }
    assert re.fullmatch(r"msg_[0-9a-f]{24}", r.id) and r.type == "message" and r.role == "assistant"
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == "".join(reply_tokens(native, 8))
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (8, 8)  # "Be brief." + the question
    assert emu.calls_for(native) == 1 and emu.calls_for(body, "/v1/messages") == 1


def test_max_tokens_is_max_tokens_stop(claude):
    r = claude.messages.create(model="llama3.2:1b", max_tokens=3, messages=USER)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


def test_stream_event_sequence_with_thinking(claude, emu):
    events = list(
        claude.messages.create(
            model="qwen3:0.6b",
            max_tokens=256,
            messages=USER,
            thinking={"type": "enabled", "budget_tokens": 1024},
            stream=True,
        )
    )
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # no ping: the converter never writes one
    native = native_of(emu)
    assert native["think"] is True  # budget_tokens is accepted, not enforced
    assert events[1].content_block.type == "thinking" and events[1].index == 0
    assert [e.delta.type for e in events[2:8]] == ["thinking_delta"] * 6
    assert "".join(e.delta.thinking for e in events[2:8]) == "".join(thinking_tokens(native, 6))
    assert events[9].content_block.type == "text" and events[9].index == 1
    assert "".join(e.delta.text for e in events[10:18]) == "".join(reply_tokens(native, 8))
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 14
    assert events[0].message.usage.input_tokens > 0 and events[0].message.content == []


def test_messages_stream_helper_accumulates(claude, emu):
    with claude.messages.stream(model="llama3.2:1b", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == "".join(reply_tokens(native_of(emu), 8))
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8


def test_tool_use_round_trip(claude, emu):
    first = claude.messages.create(model="llama3.2:1b", max_tokens=64, messages=USER, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and set(use.input) == {"city", "days"}
    assert re.fullmatch(r"call_[a-z0-9]{8}", use.id)
    second = claude.messages.create(
        model="llama3.2:1b",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            *USER,
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}],
            },
        ],
    )
    native = native_of(emu)
    assert native["messages"][1]["tool_calls"] == [
        {"id": use.id, "function": {"index": 0, "name": "get_weather", "arguments": use.input}}
    ]
    assert native["messages"][2] == {"role": "tool", "content": "18 degrees", "tool_call_id": use.id}
    assert second.stop_reason == "end_turn" and second.content[0].text == "".join(reply_tokens(native, 8))


def test_tool_use_streamed_as_input_json(claude):
    events = list(
        claude.messages.create(
            model="llama3.2:1b", max_tokens=64, messages=USER, tools=[WEATHER], stream=True
        )
    )
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1].content_block.type == "tool_use" and events[1].content_block.input == {}
    assert events[2].delta.type == "input_json_delta" and '"city"' in events[2].delta.partial_json
    assert events[4].delta.stop_reason == "tool_use"


def test_thinking_non_streamed_and_dropped_on_a_model_without_it(claude, emu):
    r = claude.messages.create(model="deepseek-r1:8b", max_tokens=64, messages=USER)
    assert [b.type for b in r.content] == ["thinking", "text"]
    assert r.content[0].thinking == "".join(thinking_tokens(native_of(emu), 6))
    plain = claude.messages.create(
        model="llama3.2:1b", max_tokens=64, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert [b.type for b in plain.content] == ["text"]  # relax_thinking: no 400 here
    off = claude.messages.create(
        model="qwen3:0.6b", max_tokens=64, messages=USER, thinking={"type": "disabled"}
    )
    assert [b.type for b in off.content] == ["text"] and native_of(emu)["think"] is False


def test_image_blocks(claude, emu):
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    r = claude.messages.create(
        model="gemma3:4b", max_tokens=64, messages=[{"role": "user", "content": content}]
    )
    assert native_of(emu)["messages"] == [{"role": "user", "content": "What is this?", "images": [PNG]}]
    assert r.content[0].text
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(
            model="llama3.2:1b", max_tokens=64, messages=[{"role": "user", "content": content}]
        )
    assert err.value.body["error"] == {"type": "invalid_request_error", "message": MULTIMODAL_REFUSED}
    url_image = [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(
            model="gemma3:4b", max_tokens=64, messages=[{"role": "user", "content": url_image}]
        )
    assert (
        err.value.body["error"]["message"]
        == "invalid image source type: url. Only base64 images are supported."
    )


def test_errors_in_anthropic_shape(claude, emu):
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="nosuch:1b", max_tokens=64, messages=USER)
    body = missing.value.body
    assert body["type"] == "error" and body["error"] == {
        "type": "not_found_error",
        "message": "model 'nosuch:1b' not found",
    }
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="llama3.2:1b", max_tokens=0, messages=USER)
    assert bad.value.body["error"]["message"] == "max_tokens is required and must be positive"
    with pytest.raises(anthropic.BadRequestError) as no_tools:
        claude.messages.create(model="deepseek-r1:8b", max_tokens=64, messages=USER, tools=[WEATHER])
    assert (
        no_tools.value.body["error"]["message"]
        == "registry.ollama.ai/library/deepseek-r1:8b does not support tools"
    )
    emu.configure(fault="busy")
    with pytest.raises(anthropic.APIStatusError) as busy:
        claude.messages.create(model="llama3.2:1b", max_tokens=64, messages=USER)
    assert busy.value.status_code == 503 and busy.value.body["error"]["type"] == "overloaded_error"


def test_count_tokens_is_not_served(claude, emu):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="llama3.2:1b", messages=USER)
    r = httpx.post(f"{emu.url}/v1/messages/count_tokens", json={"model": "llama3.2:1b", "messages": USER})
    assert r.status_code == 404 and r.text == "404 page not found"


def test_system_blocks_and_thinking_history(claude, emu):
    claude.messages.create(
        model="qwen3:0.6b",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "They greet me.", "signature": "sig"},
                    {"type": "text", "text": "Hello!"},
                ],
            },
            {"role": "user", "content": "How are you?"},
        ],
        metadata={"user_id": "u1"},
        tool_choice={"type": "auto"},
    )
    assert native_of(emu)["messages"] == [
        {"role": "system", "content": "Be brief. Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "thinking": "They greet me."},
        {"role": "user", "content": "How are you?"},
    ]
