"""LlamaIndex's ``llama-index-llms-ollama`` (Ollama's native API through the ollama client), against
the emulator and through the gateway. It sends ``"options": {"temperature": null, "num_ctx": ...}`` on
every call, after asking ``/api/show`` for the context length."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ThinkingBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from tests.clients.conftest import PNG_B64, THINKING_MODEL, VISION_MODEL, CityWeather

if TYPE_CHECKING:
    from tests.clients.conftest import Target

QUESTION = [ChatMessage(role="user", content="Why is the sky blue?")]


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"22 degrees and sunny in {city}"


def test_chat_sends_null_temperature(target: Target) -> None:
    response = target.llama_index().chat(QUESTION)
    assert response.message.content == target.upstream_reply()
    sent = target.last_generation().body["options"]
    assert isinstance(sent.get("num_ctx"), int)
    assert response.raw is not None and response.raw["done_reason"] == "stop"


def test_stream_chat(target: Target) -> None:
    responses = list(target.llama_index().stream_chat(QUESTION))
    assert responses[-1].message.content == target.upstream_reply()
    assert "".join(r.delta or "" for r in responses) == target.upstream_reply()


def test_same_request_twice(target: Target) -> None:
    llm = target.llama_index()
    first, again = llm.chat(QUESTION), llm.chat(QUESTION)
    assert again.message.content == first.message.content == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_multi_turn(target: Target) -> None:
    history = [
        ChatMessage(role="system", content="You answer briefly."),
        ChatMessage(role="user", content="Name a colour."),
        ChatMessage(role="assistant", content="Blue."),
        ChatMessage(role="user", content="Another one?"),
    ]
    response = target.llama_index().chat(history)
    assert response.message.content == target.upstream_reply()
    assert len(target.last_generation().body["messages"]) == 4


def test_runner_options(target: Target) -> None:
    llm = target.llama_index(
        context_window=4096,
        additional_kwargs={"num_thread": 2, "num_gpu": 0, "use_mmap": False, "use_mlock": True},
    )
    response = llm.chat(QUESTION)
    assert response.message.content == target.upstream_reply()
    sent = target.last_generation().body["options"]
    assert (sent.get("num_ctx"), sent.get("num_thread"), sent.get("num_gpu"), sent.get("use_mmap")) == (
        4096,
        2,
        0,
        False,
    )


def test_structured_predict(target: Target) -> None:
    result = target.llama_index().structured_predict(
        CityWeather, PromptTemplate("What is the weather in {city}?"), city="Paris"
    )
    assert isinstance(result, CityWeather) and result.city


def test_tools_round_trip(target: Target) -> None:
    llm = target.llama_index()
    tool = FunctionTool.from_defaults(fn=get_weather)
    question = ChatMessage(role="user", content="What is the weather in Paris?")
    first = llm.chat_with_tools([tool], user_msg=question)
    calls = llm.get_tool_calls_from_response(first, error_on_no_tool_call=False)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [target.upstream_tool_call()]

    result = tool.call(**calls[0].tool_kwargs)
    history = [
        question,
        first.message,
        ChatMessage(role="tool", content=str(result), additional_kwargs={"tool_call_id": calls[0].tool_id}),
    ]
    final = llm.chat_with_tools([tool], chat_history=history)
    assert final.message.content == target.upstream_reply()
    assert not llm.get_tool_calls_from_response(final, error_on_no_tool_call=False)
    sent = target.last_generation().body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_thinking(target: Target) -> None:
    response = target.llama_index(THINKING_MODEL, thinking=True).chat(QUESTION)
    thoughts = [b.content for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert thoughts == [target.upstream_thinking()]
    assert response.message.content == target.upstream_reply()


def test_thinking_streamed(target: Target) -> None:
    responses = list(target.llama_index(THINKING_MODEL, thinking=True).stream_chat(QUESTION))
    assert (
        "".join(r.additional_kwargs.get("thinking_delta") or "" for r in responses)
        == target.upstream_thinking()
    )
    assert responses[-1].message.content == target.upstream_reply()


def test_image(target: Target) -> None:
    message = ChatMessage(
        role="user",
        blocks=[TextBlock(text="What is in this picture?"), ImageBlock(image=base64.b64decode(PNG_B64))],
    )
    response = target.llama_index(VISION_MODEL).chat([message])
    assert response.message.content
    assert target.last_generation().body["messages"][0]["images"] == [PNG_B64]


def test_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.llama_index().stream_chat(QUESTION)
    assert next(stream).delta
    stream.close()
    target.wait_idle(1.0)
