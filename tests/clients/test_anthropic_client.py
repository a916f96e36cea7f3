"""The official ``anthropic`` Python client on Ollama's Anthropic-compatible layer (``/v1/messages``),
against the emulator and through the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.clients.conftest import MODEL, PNG_B64, THINKING_MODEL, VISION_MODEL, WEATHER_TOOL

if TYPE_CHECKING:
    from tests.clients.conftest import Target

QUESTION: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
TOOL: Any = {
    "name": WEATHER_TOOL["function"]["name"],
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_messages(target: Target) -> None:
    message = target.anthropic().messages.create(model=MODEL, max_tokens=256, messages=QUESTION)
    assert message.role == "assistant" and message.stop_reason == "end_turn"
    assert text_of(message) == target.upstream_reply()
    assert message.usage.output_tokens == 8


def test_messages_stream(target: Target) -> None:
    with target.anthropic().messages.stream(model=MODEL, max_tokens=256, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == target.upstream_reply() == text_of(final)


def test_same_request_twice(target: Target) -> None:
    client = target.anthropic()
    first = client.messages.create(model=MODEL, max_tokens=256, messages=QUESTION)
    again = client.messages.create(model=MODEL, max_tokens=256, messages=QUESTION)
    assert text_of(again) == text_of(first) == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_system_and_multi_turn(target: Target) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    message = target.anthropic().messages.create(
        model=MODEL, max_tokens=256, system="You answer briefly.", messages=history
    )
    assert text_of(message) == target.upstream_reply()


def test_tool_use_round_trip(target: Target) -> None:
    client = target.anthropic()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=MODEL, max_tokens=256, messages=messages, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.name, dict(u.input)) for u in uses] == [target.upstream_tool_call()]
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "22 degrees, sunny"}],
        },
    ]
    final = client.messages.create(model=MODEL, max_tokens=256, messages=messages, tools=[TOOL])
    assert final.stop_reason == "end_turn" and text_of(final) == target.upstream_reply()


def test_thinking(target: Target) -> None:
    message = target.anthropic().messages.create(
        model=THINKING_MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=QUESTION,
    )
    thoughts = [b.thinking for b in message.content if b.type == "thinking"]
    assert thoughts == [target.upstream_thinking()]
    assert text_of(message) == target.upstream_reply()


def test_thinking_streamed(target: Target) -> None:
    with target.anthropic().messages.stream(
        model=THINKING_MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=QUESTION,
    ) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == target.upstream_thinking()
    assert "".join(d.text for d in deltas if d.type == "text_delta") == target.upstream_reply()


def test_image(target: Target) -> None:
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    message = target.anthropic().messages.create(
        model=VISION_MODEL, max_tokens=256, messages=[{"role": "user", "content": content}]
    )
    assert text_of(message)


def test_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    with target.anthropic().messages.stream(model=MODEL, max_tokens=256, messages=QUESTION) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    target.wait_idle(1.0)
