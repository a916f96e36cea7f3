"""LangChain: ``langchain-ollama`` (ChatOllama, OllamaEmbeddings on Ollama's native API) and
``langchain-openai`` (ChatOpenAI, OpenAIEmbeddings on the ``/v1`` layer), against the emulator and
through the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from tests.clients.conftest import (
    PNG_B64,
    PNG_DATA_URL,
    THINKING_MODEL,
    VISION_MODEL,
    CityWeather,
)

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tests.clients.conftest import Target

QUESTION = "Why is the sky blue?"
HISTORY = [
    SystemMessage("You answer briefly."),
    HumanMessage("Name a colour."),
    AIMessage("Blue."),
    HumanMessage("Another one?"),
]
IMAGE_MESSAGE = HumanMessage(
    content=[
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
    ]
)


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"22 degrees and sunny in {city}"


def tools_round_trip(target: Target, llm: BaseChatModel) -> tuple[AIMessage, AIMessage]:
    """Ask, let the model call the tool, run it, send the result back; the two answers."""
    with_tools = llm.bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    first = with_tools.invoke(messages)
    assert isinstance(first, AIMessage)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [target.upstream_tool_call()], first
    call = first.tool_calls[0]
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"] or "")]
    final = with_tools.invoke(messages)
    assert isinstance(final, AIMessage)
    assert final.content == target.upstream_reply() and not final.tool_calls
    return first, final


# --- ChatOllama --------------------------------------------------------------------------------


def test_chat_ollama_invoke(target: Target) -> None:
    answer = target.chat_ollama().invoke(QUESTION)
    assert answer.content == target.upstream_reply()
    assert answer.response_metadata["done_reason"] == "stop"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 8


def test_chat_ollama_stream(target: Target) -> None:
    chunks = list(target.chat_ollama().stream(QUESTION))
    assert "".join(str(c.content) for c in chunks) == target.upstream_reply()
    assert len([c for c in chunks if c.content]) == 8


def test_chat_ollama_same_request_twice(target: Target) -> None:
    llm = target.chat_ollama()
    first, again = llm.invoke(QUESTION), llm.invoke(QUESTION)
    assert again.content == first.content == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_chat_ollama_multi_turn(target: Target) -> None:
    answer = target.chat_ollama().invoke(HISTORY)
    assert answer.content == target.upstream_reply()
    sent = target.last_generation().body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_chat_ollama_runner_options(target: Target) -> None:
    llm = target.chat_ollama(num_ctx=4096, num_thread=2, num_gpu=0, temperature=0.2)
    answer = llm.invoke(QUESTION)
    assert answer.content == target.upstream_reply()
    sent = target.last_generation().body["options"]
    assert (sent.get("num_ctx"), sent.get("num_thread"), sent.get("num_gpu")) == (4096, 2, 0)


def test_chat_ollama_obsolete_options(target: Target) -> None:
    answer = target.chat_ollama(mirostat=0, tfs_z=1.0).invoke(QUESTION, options={"use_mlock": True})
    assert answer.content == target.upstream_reply()


def test_chat_ollama_structured_output(target: Target) -> None:
    result = target.chat_ollama().with_structured_output(CityWeather).invoke("Weather in Paris as JSON")
    assert isinstance(result, CityWeather) and result.city
    assert target.last_generation().body["format"] == CityWeather.model_json_schema()


def test_chat_ollama_tools_round_trip(target: Target) -> None:
    tools_round_trip(target, target.chat_ollama())
    sent = target.last_generation().body["messages"]
    assert sent[-1]["role"] == "tool" and "22 degrees" in sent[-1]["content"]


def test_chat_ollama_reasoning(target: Target) -> None:
    answer = target.chat_ollama(THINKING_MODEL, reasoning=True).invoke(QUESTION)
    assert answer.additional_kwargs.get("reasoning_content") == target.upstream_thinking()
    assert answer.content == target.upstream_reply()


def test_chat_ollama_reasoning_streamed(target: Target) -> None:
    chunks = list(target.chat_ollama(THINKING_MODEL, reasoning=True).stream(QUESTION))
    assert (
        "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks)
        == target.upstream_thinking()
    )
    assert "".join(str(c.content) for c in chunks) == target.upstream_reply()


def test_chat_ollama_image(target: Target) -> None:
    answer = target.chat_ollama(VISION_MODEL).invoke([IMAGE_MESSAGE])
    assert answer.content
    assert target.last_generation().body["messages"][0]["images"] == [PNG_B64]


def test_chat_ollama_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.chat_ollama().stream(QUESTION)
    assert next(stream).content
    stream.close()
    target.wait_idle(1.0)


def test_ollama_embeddings_with_null_options(target: Target) -> None:
    embeddings = target.ollama_embeddings()
    vectors = embeddings.embed_documents(["one", "two"])
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    assert embeddings.embed_query("one") == vectors[0]


# --- ChatOpenAI --------------------------------------------------------------------------------


def test_chat_openai_invoke(target: Target) -> None:
    answer = target.chat_openai().invoke(QUESTION)
    assert answer.content == target.upstream_reply()
    assert answer.response_metadata["finish_reason"] == "stop"


def test_chat_openai_stream(target: Target) -> None:
    chunks = list(target.chat_openai().stream(QUESTION))
    assert "".join(str(c.content) for c in chunks) == target.upstream_reply()


def test_chat_openai_same_request_twice(target: Target) -> None:
    llm = target.chat_openai()
    first, again = llm.invoke(QUESTION), llm.invoke(QUESTION)
    assert again.content == first.content == target.upstream_reply()
    assert len(target.generations()) == (1 if target.via_gateway else 2)


def test_chat_openai_multi_turn(target: Target) -> None:
    answer = target.chat_openai().invoke(HISTORY)
    assert answer.content == target.upstream_reply()


def test_chat_openai_structured_output(target: Target) -> None:
    result = target.chat_openai().with_structured_output(CityWeather).invoke("Weather in Paris as JSON")
    assert isinstance(result, CityWeather) and result.city


def test_chat_openai_tools_round_trip(target: Target) -> None:
    first, _ = tools_round_trip(target, target.chat_openai())
    assert first.response_metadata["finish_reason"] == "tool_calls"


def test_chat_openai_image(target: Target) -> None:
    answer = target.chat_openai(VISION_MODEL).invoke([IMAGE_MESSAGE])
    assert answer.content


def test_chat_openai_cancel_midway(target: Target) -> None:
    target.ollama.configure(token_delay=0.2, token_count=50)
    stream = target.chat_openai().stream(QUESTION)
    while not next(stream).content:
        pass
    stream.close()
    target.wait_idle(1.0)


def test_openai_embeddings(target: Target) -> None:
    embeddings = target.openai_embeddings()
    vectors = embeddings.embed_documents(["one", "two"])
    assert len(vectors) == 2 and vectors[0] != vectors[1] and len(vectors[0]) > 0
