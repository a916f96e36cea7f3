"""The emulator's OpenAI-compatible layer against the official ``openai`` client, shaped as
openai/openai.go, openai/responses.go and middleware/openai.go make it."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fake_ollama import ALL_MODELS, FakeOllama, reply_tokens, thinking_tokens, to_native

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
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
def oai(emu: FakeOllama) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{emu.url}/v1", api_key="ollama", max_retries=0)


def native_of(emu: FakeOllama) -> dict:
    """The native request Ollama's middleware made of the last /v1 request."""
    return emu.generations_received()[-1].body


# --- chat completions ---------------------------------------------------------------------------


def test_chat_completion_is_the_native_generation(oai, emu):
    body = {"model": "llama3.2:1b", "messages": USER}
    r = oai.chat.completions.create(**body)
    path, native = to_native("/v1/chat/completions", body)
    assert native == native_of(emu)
    assert native["options"] == {"temperature": 1.0, "top_p": 1.0} and native["stream"] is False
    assert r.object == "chat.completion" and r.system_fingerprint == "fp_ollama"
    assert re.fullmatch(r"chatcmpl-\d{1,3}", r.id)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "".join(reply_tokens(native, 8))
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 8, 14)
    assert emu.calls_for(native, path) == 1 and emu.calls_for(body, "/v1/chat/completions") == 1
    assert emu.stats()["by_surface"] == {"/v1/chat/completions": 1}


def test_chat_completion_parameters_map_to_options(oai, emu):
    oai.chat.completions.create(
        model="llama3.2:1b",
        messages=[{"role": "developer", "content": "Be brief."}, *USER],
        temperature=0.3,
        max_tokens=5,
        stop=["\n"],
        seed=7,
        frequency_penalty=0.5,
        top_p=0.9,
        response_format={"type": "json_object"},
    )
    native = native_of(emu)
    assert native["options"] == {
        "frequency_penalty": 0.5,
        "num_predict": 5,
        "seed": 7,
        "stop": ["\n"],
        "temperature": 0.3,
        "top_p": 0.9,
    }
    assert native["format"] == "json" and native["messages"][0] == {
        "role": "developer",
        "content": "Be brief.",
    }


def test_structured_output_parses(oai, emu):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
    }
    r = oai.chat.completions.create(
        model="llama3.2:1b",
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    assert native_of(emu)["format"] == schema
    value = json.loads(r.choices[0].message.content)
    assert isinstance(value["city"], str) and isinstance(value["rain"], bool)


def test_chat_completion_tools_not_streamed(oai):
    r = oai.chat.completions.create(
        model="llama3.2:1b", messages=USER, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == ""
    call = choice.message.tool_calls[0]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "days"}


def test_chat_completion_tools_streamed(oai):
    chunks = list(
        oai.chat.completions.create(model="qwen2.5:0.5b", messages=USER, tools=[WEATHER], stream=True)
    )
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant" and deltas[0].content == ""
    call = deltas[0].tool_calls[0]
    assert call.index == 0 and call.id.startswith("call_") and json.loads(call.function.arguments)["city"]
    assert [c.choices[0].finish_reason for c in chunks] == [None, "tool_calls"]
    assert deltas[-1].model_dump(exclude_none=True) == {}  # the finish chunk's delta is empty


def test_tool_round_trip_with_tool_call_id(oai, emu):
    first = oai.chat.completions.create(model="llama3.2:1b", messages=USER, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    answer = oai.chat.completions.create(model="llama3.2:1b", messages=history, tools=[WEATHER])
    native = native_of(emu)
    assert native["messages"][-1] == {
        "role": "tool",
        "content": "18 degrees",
        "tool_name": "get_weather",  # found from the tool_call_id
        "tool_call_id": call.id,
    }
    assert native["messages"][1]["tool_calls"][0]["function"]["arguments"] == json.loads(
        call.function.arguments
    )
    assert answer.choices[0].message.content == "".join(reply_tokens(native, 8))
    assert answer.choices[0].finish_reason == "stop"


def test_reasoning_in_raw_responses(oai, emu):
    raw = oai.chat.completions.with_raw_response.create(model="qwen3:0.6b", messages=USER)
    message = json.loads(raw.text)["choices"][0]["message"]
    native = native_of(emu)
    assert message["reasoning"] == "".join(thinking_tokens(native, 6)) and "reasoning_content" not in message
    with httpx.stream(
        "POST",
        f"{emu.url}/v1/chat/completions",
        json={"model": "qwen3:0.6b", "messages": USER, "stream": True},
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": thinking_tokens(native, 6)[0]}
    assert [d.get("reasoning") for d in deltas[1:6]] == thinking_tokens(native, 6)[1:]
    assert deltas[6] == {"content": reply_tokens(native, 8)[0]} and deltas[-1] == {}


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("high", "high"), ("xhigh", "max"), (None, None)],
)
def test_reasoning_effort_maps_to_think(oai, emu, effort, think):
    extra = {"reasoning_effort": effort} if effort else {}
    r = oai.chat.completions.create(model="qwen3:0.6b", messages=USER, **extra)
    assert native_of(emu).get("think") == think
    assert r.usage.completion_tokens == 8 + {False: 0, "low": 3, "high": 12, "max": 18, None: 6}[think]


def test_an_invalid_reasoning_effort_is_400(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="qwen3:0.6b", messages=USER, reasoning_effort="enormous")
    assert err.value.body["message"].startswith('invalid reasoning value: "enormous"')
    assert err.value.body["type"] == "invalid_request_error"


def test_image_url_parts_become_images(oai, emu):
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    r = oai.chat.completions.create(model="gemma3:4b", messages=[{"role": "user", "content": content}])
    assert native_of(emu)["messages"] == [
        {"role": "user", "content": "What is this?"},
        {"role": "user", "content": "", "images": [PNG]},
    ]
    assert r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model="gemma3:4b",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
            ],
        )
    assert (
        err.value.body["message"]
        == "image URLs are not currently supported, please use base64 encoded data instead"
    )


def test_logprobs_on_chat_completions(oai):
    r = oai.chat.completions.create(model="llama3.2:1b", messages=USER, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert len(content[0].top_logprobs) == 2 and content[0].bytes == list(content[0].token.encode())


def test_streaming_with_usage(oai, emu):
    chunks = list(
        oai.chat.completions.create(
            model="llama3.2:1b", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    native = native_of(emu)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        reply_tokens(native, 8)
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_errors_in_openai_shape(oai, emu):
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="nosuch:1b", messages=USER)
    assert missing.value.body == {
        "message": "model 'nosuch:1b' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as empty:
        oai.chat.completions.create(model="llama3.2:1b", messages=[])
    assert empty.value.body["message"] == "[] is too short - 'messages'"
    with pytest.raises(openai.BadRequestError) as no_tools:
        oai.chat.completions.create(model="deepseek-r1:8b", messages=USER, tools=[WEATHER])
    assert (
        no_tools.value.body["message"] == "registry.ollama.ai/library/deepseek-r1:8b does not support tools"
    )
    with pytest.raises(openai.BadRequestError) as typed:
        oai.chat.completions.create(model="llama3.2:1b", messages=USER, extra_body={"seed": "x"})
    assert typed.value.body["message"] == (
        "json: cannot unmarshal string into Go struct field ChatCompletionRequest.seed of type int"
    )
    emu.configure(fault="busy")
    with pytest.raises(openai.APIStatusError) as busy:
        oai.chat.completions.create(model="llama3.2:1b", messages=USER)
    assert busy.value.status_code == 503 and busy.value.body["type"] == "api_error"


# --- completions, embeddings, models ------------------------------------------------------------


def test_completions_whole_and_streamed(oai, emu):
    r = oai.completions.create(model="llama3.2:1b", prompt="Once upon a time", max_tokens=4)
    native = native_of(emu)
    assert native["options"] == {
        "frequency_penalty": 0.0,
        "num_predict": 4,
        "presence_penalty": 0.0,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    assert r.object == "text_completion" and r.choices[0].text == "".join(reply_tokens(native, 4))
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    parts = list(oai.completions.create(model="llama3.2:1b", prompt="Once upon a time", stream=True))
    assert "".join(p.choices[0].text for p in parts) == "".join(reply_tokens(native_of(emu), 8))
    assert [p.choices[0].finish_reason for p in parts][-1] == "stop"


def test_completions_suffix(oai, emu):
    r = oai.completions.create(model="qwen2.5-coder:1.5b", prompt="def add(a, b):", suffix="    return c")
    assert native_of(emu)["suffix"] == "    return c" and r.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="llama3.2:1b", prompt="def add(a, b):", suffix="    return c")
    assert err.value.body["message"] == "registry.ollama.ai/library/llama3.2:1b does not support insert"


def test_embeddings_float_and_base64(oai, emu):
    floats = oai.embeddings.create(model="nomic-embed-text", input=["one", "two"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 768
    assert floats.model == "nomic-embed-text" and floats.usage.prompt_tokens == 2
    default = oai.embeddings.create(
        model="nomic-embed-text", input="one", dimensions=8
    )  # the client asks base64
    assert len(default.data[0].embedding) == 8
    assert math.isclose(sum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-4)
    raw = httpx.post(
        f"{emu.url}/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "one", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<768f", base64.b64decode(raw["data"][0]["embedding"]))
    assert all(
        math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, floats.data[0].embedding, strict=True)
    )
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model="nomic-embed-text", input="one", encoding_format="hex")  # type: ignore[arg-type]
    assert (
        err.value.body["message"]
        == "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."
    )


def test_models_list_and_retrieve(oai):
    assert [m.id for m in oai.models.list()] == list(ALL_MODELS)
    model = oai.models.retrieve("qwen3:0.6b")
    assert (model.id, model.object, model.owned_by) == ("qwen3:0.6b", "model", "library")
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("nosuch:1b")
    assert err.value.body["message"] == "model 'nosuch:1b' not found"


# --- responses ----------------------------------------------------------------------------------


def test_responses_plain(oai, emu):
    r = oai.responses.create(model="llama3.2:1b", input="Tell me a story", instructions="Be brief.")
    native = native_of(emu)
    assert native["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story"},
    ]
    assert r.status == "completed" and r.output_text == "".join(reply_tokens(native, 8))
    assert r.id.startswith("resp_") and r.output[0].type == "message" and r.previous_response_id is None
    assert r.usage.output_tokens == 8 and r.instructions == "Be brief."


def test_responses_previous_response_id_is_ignored(oai, emu):
    first = oai.responses.create(model="llama3.2:1b", input="one")
    second = oai.responses.create(model="llama3.2:1b", input="one", previous_response_id=first.id)
    assert second.previous_response_id is None and second.output_text == first.output_text  # stateless
    assert emu.calls_for(native_of(emu)) == 2


def test_responses_stream_event_sequence(oai, emu):
    with oai.responses.stream(model="qwen3:0.6b", input="Tell me a story") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.reasoning_summary_text.delta"] * 6,
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
    assert [e.sequence_number for e in events] == list(range(len(events)))
    native = native_of(emu)
    assert final.output_text == "".join(reply_tokens(native, 8))
    assert final.output[0].type == "reasoning" and final.output[0].summary[0].text == "".join(
        thinking_tokens(native, 6)
    )


def test_responses_function_calls_round_trip(oai, emu):
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "w",
            "parameters": WEATHER["function"]["parameters"],
        }
    ]
    r = oai.responses.create(model="llama3.2:1b", input="Weather in Paris?", tools=tools)
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city", "days"}
    follow = oai.responses.create(
        model="llama3.2:1b",
        tools=tools,
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
    native = native_of(emu)
    assert native["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert native["messages"][2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call.call_id}
    assert follow.output_text == "".join(reply_tokens(native, 8))


def test_responses_stream_with_tools(oai):
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}]
    with oai.responses.stream(model="llama3.2:1b", input="Weather?", tools=tools) as stream:
        kinds = [e.type for e in stream]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_responses_errors(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="llama3.2:1b", input=[{"type": "mystery"}])
    assert err.value.body["message"] == 'input[0]: unknown input item type: "mystery"'
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="nosuch:1b", input="hi")


def test_responses_reasoning_effort_and_echoed_fields(oai, emu):
    r = oai.responses.create(
        model="qwen3:0.6b", input="hi", reasoning={"effort": "high"}, max_output_tokens=30, temperature=0.4
    )
    native = native_of(emu)
    assert native["think"] == "high" and native["options"] == {"num_predict": 30, "temperature": 0.4}
    assert r.output[0].type == "reasoning" and len(r.output[0].summary[0].text.split()) == 12
    assert r.reasoning.effort == "high" and r.temperature == 0.4 and r.max_output_tokens == 30
    assert r.tool_choice == "auto" and r.truncation == "disabled" and r.store is False
