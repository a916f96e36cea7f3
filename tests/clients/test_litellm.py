"""The LiteLLM SDK, through its native Ollama provider (``ollama_chat/``, ``/api/chat``) and its OpenAI
provider (``openai/``, ``/v1``), against the emulator and through the gateway. (conftest set
``LITELLM_LOCAL_MODEL_COST_MAP`` before litellm was imported.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import litellm

from tests.clients.conftest import (
    EMBED_MODEL,
    PNG_DATA_URL,
    THINKING_MODEL,
    VISION_MODEL,
    WEATHER_TOOL,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.clients.conftest import Target

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
HISTORY = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]
IMAGE_QUESTION = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        ],
    }
]


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def streamed_reasoning(chunks: list[Any]) -> str:
    return "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)


def tools_round_trip(target: Target, complete: Callable[..., Any]) -> tuple[Any, Any]:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = complete(messages=messages, tools=[WEATHER_TOOL])
    message = first.choices[0].message
    calls = message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        target.upstream_tool_call()
    ]
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "22 degrees, sunny"},
    ]
    final = complete(messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == target.upstream_reply()
    assert not final.choices[0].message.tool_calls
    return first, final


# --- ollama_chat/ ------------------------------------------------------------------------------


def test_ollama_chat_completion(target: Target) -> None:
    response = target.litellm_ollama(messages=QUESTION)
    assert response.choices[0].message.content == target.upstream_reply()
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 8


def test_ollama_chat_stream(target: Target) -> None:
    chunks = list(target.litellm_ollama(messages=QUESTION, stream=True))
    assert streamed_text(chunks) == target.upstream_reply()


def test_ollama_chat_same_request_twice(target: Target) -> None:
    first = target.litellm_ollama(messages=QUESTION)
    again = target.litellm_ollama(messages=QUESTION)
    assert again.choices[0].message.content == first.choices[0].message.content == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_ollama_chat_multi_turn(target: Target) -> None:
    response = target.litellm_ollama(messages=HISTORY)
    assert response.choices[0].message.content == target.upstream_reply()
    assert len(target.last_generation().body["messages"]) == 4


def test_ollama_chat_options(target: Target) -> None:
    response = target.litellm_ollama(messages=QUESTION, temperature=0.1, seed=3, max_tokens=5)
    assert response.choices[0].message.content == target.upstream_reply()
    assert response.choices[0].finish_reason == "length"


def test_ollama_chat_tools_round_trip(target: Target) -> None:
    first, _ = tools_round_trip(target, target.litellm_ollama)
    assert first.choices[0].finish_reason == "tool_calls"


def test_ollama_chat_reasoning_content(target: Target) -> None:
    response = target.litellm_ollama(THINKING_MODEL, messages=QUESTION, reasoning_effort="low")
    message = response.choices[0].message
    assert message.reasoning_content == target.upstream_thinking()
    assert message.content == target.upstream_reply()
    assert target.last_generation().body.get("think") is True


def test_ollama_chat_reasoning_streamed(target: Target) -> None:
    stream = target.litellm_ollama(THINKING_MODEL, messages=QUESTION, stream=True, reasoning_effort="low")
    chunks = list(stream)
    assert streamed_reasoning(chunks) == target.upstream_thinking()
    assert streamed_text(chunks) == target.upstream_reply()


def test_ollama_chat_image(target: Target) -> None:
    response = target.litellm_ollama(VISION_MODEL, messages=IMAGE_QUESTION)
    assert response.choices[0].message.content
    assert len(target.last_generation().body["messages"][0]["images"]) == 1


def test_ollama_embedding(target: Target) -> None:
    result = litellm.embedding(model=f"ollama/{EMBED_MODEL}", api_base=target.url, input=["one", "two"])
    vectors = [d["embedding"] for d in result.data]
    assert len(vectors) == 2 and vectors[0] != vectors[1]


def test_ollama_chat_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.litellm_ollama(messages=QUESTION, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    target.wait_idle(1.0)


# --- openai/ -----------------------------------------------------------------------------------


def test_openai_completion(target: Target) -> None:
    response = target.litellm_openai(messages=QUESTION)
    assert response.choices[0].message.content == target.upstream_reply()
    assert response.choices[0].finish_reason == "stop"


def test_openai_stream(target: Target) -> None:
    chunks = list(target.litellm_openai(messages=QUESTION, stream=True))
    assert streamed_text(chunks) == target.upstream_reply()


def test_openai_same_request_twice(target: Target) -> None:
    first = target.litellm_openai(messages=QUESTION)
    again = target.litellm_openai(messages=QUESTION)
    assert again.choices[0].message.content == first.choices[0].message.content == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_openai_tools_round_trip(target: Target) -> None:
    first, _ = tools_round_trip(target, target.litellm_openai)
    assert first.choices[0].finish_reason == "tool_calls"


def test_openai_reasoning_content(target: Target) -> None:
    message = target.litellm_openai(THINKING_MODEL, messages=QUESTION).choices[0].message
    assert message.reasoning_content == target.upstream_thinking()
    assert message.content == target.upstream_reply()


def test_openai_reasoning_streamed(target: Target) -> None:
    chunks = list(target.litellm_openai(THINKING_MODEL, messages=QUESTION, stream=True))
    assert streamed_reasoning(chunks) == target.upstream_thinking()
    assert streamed_text(chunks) == target.upstream_reply()


def test_openai_image(target: Target) -> None:
    response = target.litellm_openai(VISION_MODEL, messages=IMAGE_QUESTION)
    assert response.choices[0].message.content
