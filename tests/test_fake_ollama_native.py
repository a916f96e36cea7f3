"""The emulator's native API against the official ``ollama`` client: the catalogue, thinking, tool
calls, logprobs, options, images and embeddings, with Ollama's exact shapes and error texts."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator

import httpx
import ollama as ollama_sdk
import pytest

from tests.fake_ollama import (
    ALL_MODELS,
    MULTIMODAL_REFUSED,
    FakeOllama,
    content_tokens,
    reply_tokens,
    thinking_tokens,
)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")


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
def client(emu: FakeOllama) -> ollama_sdk.Client:
    return ollama_sdk.Client(host=emu.url)


def last_body(emu: FakeOllama) -> dict:
    return emu.requests[-1].body


# --- the catalogue ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "capabilities", "architecture"),
    [
        ("llama3.2:1b", ["completion", "tools"], "llama"),
        ("deepseek-r1:8b", ["completion", "thinking"], "qwen3"),
        ("qwen2.5:0.5b", ["completion", "tools"], "qwen2"),
        ("qwen3:0.6b", ["completion", "tools", "thinking"], "qwen3"),
        ("gemma3:4b", ["completion", "vision"], "gemma3"),
        ("llama3.2-vision:11b", ["completion", "vision"], "mllama"),
        ("nomic-embed-text:latest", ["embedding"], "nomic-bert"),
        ("qwen2.5-coder:1.5b", ["completion", "tools", "insert"], "qwen2"),
    ],
)
def test_show_gives_capabilities_and_architecture(client, name, capabilities, architecture):
    shown = client.show(name)
    assert shown.capabilities == capabilities
    assert shown.modelinfo["general.architecture"] == architecture == shown.details.family
    assert shown.modelinfo[f"{architecture}.context_length"] > 0


def test_tags_lists_the_catalogue_with_capabilities(client, emu):
    assert [m.model for m in client.list().models] == list(ALL_MODELS)
    raw = httpx.get(f"{emu.url}/api/tags").json()["models"]
    embed = next(m for m in raw if m["name"] == "nomic-embed-text:latest")
    assert embed["capabilities"] == ["embedding"]
    assert embed["details"]["family"] == "nomic-bert" and embed["details"]["embedding_length"] == 768


def test_default_emulator_keeps_its_three_models():
    with FakeOllama() as fake:
        assert [m["name"] for m in httpx.get(f"{fake.url}/api/tags").json()["models"]] == [
            "llama3.2:1b",
            "deepseek-r1:8b",
            "qwen2.5:0.5b",
        ]


def test_custom_models_with_capabilities():
    custom = {"name": "mine:7b", "family": "qwen3", "capabilities": ["completion", "tools", "thinking"]}
    with FakeOllama(models=["gemma3:4b", custom]) as fake:
        shown = ollama_sdk.Client(host=fake.url).show("mine:7b")
        assert shown.capabilities == ["completion", "tools", "thinking"]
        assert shown.modelinfo["general.architecture"] == "qwen3"
        r = ollama_sdk.Client(host=fake.url).chat(model="mine:7b", messages=USER)
        assert r.message.thinking  # thinking is on by default for it


def test_a_name_without_tag_is_latest(client):
    assert client.show("nomic-embed-text").capabilities == ["embedding"]


# --- thinking -----------------------------------------------------------------------------------


def test_thinking_model_thinks_by_default_streamed(client, emu):
    chunks = list(client.chat(model="qwen3:0.6b", messages=USER, stream=True))
    body = last_body(emu)
    assert "think" not in body
    thinking = thinking_tokens(body, 6)
    content = reply_tokens(body, 8)
    assert [c.message.thinking for c in chunks[:6]] == thinking
    assert [c.message.content for c in chunks[:6]] == [""] * 6
    assert (
        [c.message.content for c in chunks[6:-1]]
        == content
        == reply_tokens({"model": "qwen3:0.6b", "messages": USER}, 8)
    )
    assert all(c.message.thinking is None for c in chunks[6:])
    assert chunks[-1].done and chunks[-1].done_reason == "stop" and chunks[-1].eval_count == 14


def test_thinking_whole_when_not_streamed(client, emu):
    r = client.chat(model="deepseek-r1:8b", messages=USER, stream=False)
    body = last_body(emu)
    assert r.message.thinking == "".join(thinking_tokens(body, 6))
    assert r.message.content == "".join(reply_tokens(body, 8))
    assert r.eval_count == 14
    generated = client.generate(model="deepseek-r1:8b", prompt="Hello", stream=False)
    assert generated.thinking and generated.response == "".join(reply_tokens(last_body(emu), 8))


@pytest.mark.parametrize(
    ("think", "count"), [(False, 0), (True, 6), ("low", 3), ("medium", 6), ("high", 12), ("max", 18)]
)
def test_think_levels(client, emu, think, count):
    r = client.chat(model="qwen3:0.6b", messages=USER, think=think)
    body = last_body(emu)
    assert body["think"] == think
    assert (r.message.thinking or "") == "".join(thinking_tokens(body, count) if count else [])
    assert r.message.content == "".join(reply_tokens(body, 8)) and r.eval_count == count + 8


def test_think_on_a_model_without_thinking_is_ollamas_400(client):
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="llama3.2:1b", messages=USER, think=True)
    assert err.value.status_code == 400 and err.value.error == '"llama3.2:1b" does not support thinking'
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.generate(model="qwen2.5:0.5b", prompt="hi", think="low")
    assert err.value.error == '"qwen2.5:0.5b" does not support thinking'
    assert client.chat(model="llama3.2:1b", messages=USER, think=False).message.thinking is None


def test_an_invalid_think_value_is_ollamas_400(emu):
    r = httpx.post(f"{emu.url}/api/chat", json={"model": "qwen3:0.6b", "messages": USER, "think": "huge"})
    assert r.status_code == 400
    assert r.json() == {
        "error": 'invalid think value: "huge" (must be "high", "medium", "low", "max", true, or false)'
    }
    r = httpx.post(f"{emu.url}/api/chat", json={"model": "qwen3:0.6b", "messages": USER, "think": 1})
    assert (
        r.json()["error"]
        == 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def test_llama_default_model_never_thinks(client, emu):
    chunks = list(client.chat(model="llama3.2:1b", messages=USER, stream=True))
    assert all(not c.message.thinking for c in chunks) and len(chunks) == 9


# --- tool calls ---------------------------------------------------------------------------------


def test_tool_calls_streamed_whole_with_ids(client, emu):
    chunks = list(client.chat(model="llama3.2:1b", messages=USER, tools=[WEATHER], stream=True))
    assert len(chunks) == 2
    call = chunks[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert set(call.function.arguments) == {"city", "days", "unit", "hourly"}
    assert isinstance(call.function.arguments["days"], int) and call.function.arguments["unit"] in (
        "celsius",
        "fahrenheit",
    )
    assert chunks[0].message.content == "" and chunks[-1].done_reason == "stop"

    with httpx.stream(
        "POST", f"{emu.url}/api/chat", json={"model": "llama3.2:1b", "messages": USER, "tools": [WEATHER]}
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    raw = lines[0]["message"]
    assert raw["content"] == "" and len(raw["tool_calls"]) == 1
    assert CALL_ID.match(raw["tool_calls"][0]["id"])
    assert raw["tool_calls"][0]["function"]["index"] == 0
    assert list(raw["tool_calls"][0]["function"]["arguments"]) == [
        "city",
        "days",
        "unit",
        "hourly",
    ]  # order kept
    assert raw["tool_calls"][0]["function"]["arguments"] == dict(call.function.arguments)  # deterministic
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 8


def test_tool_call_ids_are_random_per_generation(emu):
    body = {"model": "qwen2.5:0.5b", "messages": USER, "tools": [WEATHER], "stream": False}
    first, second = (
        httpx.post(f"{emu.url}/api/chat", json=body).json()["message"]["tool_calls"][0] for _ in range(2)
    )
    assert first["id"] != second["id"] and first["function"] == second["function"]
    assert emu.calls_for(body) == 2 and emu.stats()["tool_calls"] == 2


def test_tool_round_trip_answers_with_content(client, emu):
    first = client.chat(model="llama3.2:1b", messages=USER, tools=[WEATHER])
    call = first.message.tool_calls[0]
    history = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "thinking": "I should call it",
            "tool_calls": [call.model_dump()],
        },
        {
            "role": "tool",
            "content": "18 degrees",
            "tool_name": "get_weather",
            "tool_call_id": "call_abcdefgh",
        },
    ]
    answer = client.chat(model="llama3.2:1b", messages=history, tools=[WEATHER])
    assert answer.message.tool_calls is None
    assert answer.message.content == "".join(reply_tokens(last_body(emu), 8))


def test_roles_are_case_insensitive(emu):
    body = {
        "model": "llama3.2:1b",
        "messages": [{"role": "USER", "content": "hi"}],
        "tools": [WEATHER],
        "stream": False,
    }
    assert httpx.post(f"{emu.url}/api/chat", json=body).json()["message"]["tool_calls"]


def test_tools_on_a_model_without_tools_is_ollamas_400(client):
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="deepseek-r1:8b", messages=USER, tools=[WEATHER])
    assert err.value.status_code == 400
    assert err.value.error == "registry.ollama.ai/library/deepseek-r1:8b does not support tools"


def test_thinking_and_tools_model_thinks_then_calls(client):
    r = client.chat(model="qwen3:0.6b", messages=USER, tools=[WEATHER])
    assert (
        r.message.thinking
        and r.message.content == ""
        and r.message.tool_calls[0].function.name == "get_weather"
    )
    assert r.eval_count == 6 + 8  # a tool call costs token_count tokens


# --- logprobs -----------------------------------------------------------------------------------


def test_logprobs_in_chunks_and_whole(client, emu):
    r = client.chat(model="llama3.2:1b", messages=USER, logprobs=True, top_logprobs=3)
    assert "".join(lp.token for lp in r.logprobs) == r.message.content
    first = r.logprobs[0]
    assert first.logprob < 0 and len(first.top_logprobs) == 3 and first.top_logprobs[0].token == first.token
    assert [t.logprob for t in first.top_logprobs] == sorted(
        (t.logprob for t in first.top_logprobs), reverse=True
    )
    with httpx.stream(
        "POST", f"{emu.url}/api/chat", json={"model": "llama3.2:1b", "messages": USER, "logprobs": True}
    ) as s:
        lines = [json.loads(line) for line in s.iter_lines() if line]
    entry = lines[0]["logprobs"][0]
    assert set(entry) == {"token", "logprob", "bytes"} and entry["bytes"] == list(entry["token"].encode())
    assert entry["logprob"] == first.logprob  # deterministic
    assert "logprobs" not in lines[-1]


def test_generate_logprobs_and_thinking_logprobs(client):
    r = client.generate(model="deepseek-r1:8b", prompt="Hello", logprobs=True)
    assert len(r.logprobs) == 14  # thinking tokens carry logprobs too


def test_top_logprobs_out_of_range_is_400(client):
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="llama3.2:1b", messages=USER, logprobs=True, top_logprobs=21)
    assert err.value.status_code == 400 and err.value.error == "top_logprobs must be between 0 and 20"


# --- options, format, images --------------------------------------------------------------------


def test_options_as_from_map_reads_them(client, emu):
    r = client.chat(
        model="llama3.2:1b",
        messages=USER,
        options={
            "num_predict": 3.0,
            "temperature": None,
            "mirostat": 2,
            "penalize_newline": True,
            "top_k": 5,
        },
    )
    assert r.done_reason == "length" and r.eval_count == 3
    got = emu.generations_received()[-1]
    assert got.options == {"num_predict": 3, "top_k": 5}
    assert sorted(got.ignored_options) == ["mirostat", "penalize_newline"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": "big"}, 'option "num_ctx" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "x"}, 'option "stop" must be of type array'),
        ({"stop": [1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_a_wrong_option_type_is_ollamas_error(client, emu, options, message):
    # FromMap's error reaches handleScheduleError, which answers 500 (not 400).
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="llama3.2:1b", messages=USER, options=options)
    assert err.value.status_code == 500 and err.value.error == message
    assert emu.stats()["generations"] == 0


@pytest.mark.parametrize("fmt", ["", "json", {"type": "object", "properties": {"a": {"type": "string"}}}])
def test_formats_ollama_accepts(client, fmt):
    assert client.chat(model="llama3.2:1b", messages=USER, format=fmt).done


def test_structured_outputs_are_json(client, emu):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "temperature": {"type": "number", "minimum": -30, "maximum": 45},
            "days": {"type": "array", "items": {"$ref": "#/$defs/Day"}},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
        "required": ["city", "temperature", "days"],
        "$defs": {
            "Day": {"type": "object", "properties": {"name": {"type": "string", "enum": ["mon", "tue"]}}}
        },
    }
    r = client.chat(model="llama3.2:1b", messages=USER, format=schema)
    value = json.loads(r.message.content)
    assert r.message.content == "".join(content_tokens(last_body(emu), 8))
    assert set(value) == {"city", "temperature", "days", "note"} and isinstance(value["note"], str)
    assert -30 <= value["temperature"] <= 45 and value["days"][0]["name"] in ("mon", "tue")
    plain = client.chat(model="llama3.2:1b", messages=USER, format="json")
    assert json.loads(plain.message.content) == {"answer": "".join(reply_tokens(last_body(emu), 8))}
    thought = client.chat(model="qwen3:0.6b", messages=USER, format=schema)  # thinks, then the JSON
    assert thought.message.thinking and json.loads(thought.message.content)["city"]


def test_an_unknown_format_fails_as_the_runner_does(emu):
    r = httpx.post(f"{emu.url}/api/chat", json={"model": "llama3.2:1b", "messages": USER, "format": "yaml"})
    assert r.status_code == 500
    assert r.json()["error"] == 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'


def test_images_for_vision_models_only(client, emu):
    with_image = [{"role": "user", "content": "What is this?", "images": [PNG]}]
    assert client.chat(model="gemma3:4b", messages=with_image).message.content
    assert client.generate(model="gemma3:4b", prompt="What is this?", images=[PNG]).response
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="llama3.2:1b", messages=with_image)
    assert err.value.status_code == 400 and err.value.error == MULTIMODAL_REFUSED
    bad = httpx.post(
        f"{emu.url}/api/chat",
        json={
            "model": "gemma3:4b",
            "messages": [{"role": "user", "content": "x", "images": ["not base64!"]}],
        },
    )
    assert bad.status_code == 400 and bad.json()["error"] == "illegal base64 data at input byte 3"


def test_mllama_takes_one_image_per_message(emu):
    two = {"model": "llama3.2-vision:11b", "prompt": "x", "images": [PNG, PNG], "stream": False}
    r = httpx.post(f"{emu.url}/api/generate", json=two)
    assert r.status_code == 400
    assert r.json()["error"] == "this model only supports one image while more than one image requested"


def test_truncate_shift_keep_alive_accepted(client, emu):
    r = httpx.post(
        f"{emu.url}/api/chat",
        json={
            "model": "llama3.2:1b",
            "messages": USER,
            "truncate": False,
            "shift": True,
            "keep_alive": "1m",
            "stream": False,
        },
    )
    assert r.status_code == 200
    assert 0 < emu.stats()["runners"]["llama3.2:1b"]["expires_in"] <= 60


def test_debug_render_only_generates_nothing(emu):
    r = httpx.post(
        f"{emu.url}/api/chat",
        json={"model": "llama3.2:1b", "messages": USER, "_debug_render_only": True, "stream": False},
    ).json()
    assert r["done"] is False and "What is the weather" in r["_debug_info"]["rendered_template"]
    assert emu.stats()["generations"] == 0


def test_a_suffix_needs_the_insert_capability(client):
    assert client.generate(model="qwen2.5-coder:1.5b", prompt="def f(", suffix="return 1").response
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.generate(model="llama3.2:1b", prompt="def f(", suffix="return 1")
    assert err.value.error == "registry.ollama.ai/library/llama3.2:1b does not support insert"


def test_chat_on_an_embedding_model_is_400(client):
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.chat(model="nomic-embed-text:latest", messages=USER)
    assert err.value.error == '"nomic-embed-text:latest" does not support chat'
    with pytest.raises(ollama_sdk.ResponseError) as err:
        client.generate(model="nomic-embed-text:latest", prompt="hi")
    assert err.value.error == '"nomic-embed-text:latest" does not support generate'


# --- embeddings ---------------------------------------------------------------------------------


def test_embed_normalised_with_dimensions(client, emu):
    r = client.embed(model="nomic-embed-text", input=["one two", "three"])
    assert r.model == "nomic-embed-text" and len(r.embeddings) == 2 and len(r.embeddings[0]) == 768
    assert math.isclose(sum(v * v for v in r.embeddings[0]), 1.0, rel_tol=1e-4)
    assert (
        r.prompt_eval_count == 3
        and r.embeddings == client.embed(model="nomic-embed-text", input=["one two", "three"]).embeddings
    )
    short = client.embed(model="nomic-embed-text", input="one two", dimensions=4).embeddings[0]
    assert len(short) == 4 and math.isclose(sum(v * v for v in short), 1.0, rel_tol=1e-4)
    assert client.embed(model="nomic-embed-text", input="").embeddings == []
    assert emu.stats()["embeddings"] == 3


def test_legacy_embeddings_prompt_to_embedding(client, emu):
    r = client.embeddings(model="nomic-embed-text", prompt="one two")
    assert len(r.embedding) == 768 and not math.isclose(sum(v * v for v in r.embedding), 1.0, rel_tol=1e-2)
    normalised = client.embed(model="nomic-embed-text", input="one two").embeddings[0]
    norm = math.sqrt(sum(v * v for v in r.embedding))
    assert all(math.isclose(a / norm, b, abs_tol=1e-5) for a, b in zip(r.embedding, normalised, strict=True))
    assert client.embeddings(model="nomic-embed-text", prompt="").embedding == []
    missing = httpx.post(f"{emu.url}/api/embeddings", json={"model": "nosuch", "prompt": "x"})
    assert missing.status_code == 404 and missing.json() == {
        "error": 'model "nosuch" not found, try pulling it first'
    }


def test_embed_errors(emu):
    r = httpx.post(f"{emu.url}/api/embed", json={"model": "nomic-embed-text", "input": [1, 2]})
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}
    r = httpx.post(
        f"{emu.url}/api/embed", json={"model": "nomic-embed-text", "input": "a " * 3000, "truncate": False}
    )
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}


# --- errors and routes --------------------------------------------------------------------------


def test_unknown_paths_and_methods_as_gin_answers(emu):
    r = httpx.post(f"{emu.url}/api/nothing", json={})
    assert r.status_code == 404 and r.text == "404 page not found"
    r = httpx.get(f"{emu.url}/api/chat")
    assert r.status_code == 405 and r.text == "405 method not allowed"
    r = httpx.post(f"{emu.url}/api/chat", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


def test_bad_keep_alive_texts(emu):
    for value, message in [
        ("300", 'time: missing unit in duration "300"'),
        ("soon", 'time: invalid duration "soon"'),
        ("3d", 'time: unknown unit "d" in duration "3d"'),
    ]:
        r = httpx.post(
            f"{emu.url}/api/chat", json={"model": "llama3.2:1b", "messages": USER, "keep_alive": value}
        )
        assert r.status_code == 400 and r.json() == {"error": message}
