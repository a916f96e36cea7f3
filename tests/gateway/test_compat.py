"""The official ollama and openai Python clients against the live service (and the emulator behind it)."""

from __future__ import annotations

import concurrent.futures

import httpx
import ollama as ollama_sdk
import openai
import pytest

from tests.fake_ollama import reply_tokens
from tests.helpers import MODEL, messages, ollama_body

QUESTION = messages("Why is the sky blue?")


def expected(body: dict, count: int = 8) -> str:
    return "".join(reply_tokens(body, count))


@pytest.fixture
def client(server) -> ollama_sdk.Client:
    return ollama_sdk.Client(host=server.url)


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_ollama_chat_then_served_from_cache(client, ollama):
    first = client.chat(model=MODEL, messages=QUESTION, stream=False)
    again = client.chat(model=MODEL, messages=QUESTION, stream=False)
    assert first.message.content == expected(ollama_body("Why is the sky blue?")) == again.message.content
    assert first.done and first.done_reason == "stop" and first.eval_count == 8
    assert ollama.calls_for(ollama_body("Why is the sky blue?")) == 1


def test_ollama_streaming_chat_chunk_by_chunk(client, ollama):
    chunks = list(client.chat(model=MODEL, messages=QUESTION, stream=True))
    replay = list(client.chat(model=MODEL, messages=QUESTION, stream=True))
    tokens = reply_tokens(ollama_body("Why is the sky blue?"), 8)
    assert [c.message.content for c in chunks[:-1]] == tokens == [c.message.content for c in replay[:-1]]
    assert chunks[-1].done and chunks[-1].eval_count == 8 and replay[-1].done
    assert ollama.calls_for(ollama_body("Why is the sky blue?")) == 1


def test_ollama_generate_whole_and_streamed(client, ollama):
    whole = client.generate(model=MODEL, prompt="Hello", stream=False)
    parts = list(client.generate(model=MODEL, prompt="Hello", stream=True))
    assert (
        whole.response == "".join(p.response for p in parts) == expected({"model": MODEL, "prompt": "Hello"})
    )
    assert parts[-1].done and parts[-1].context
    assert ollama.calls_for({"model": MODEL, "prompt": "Hello"}, path="/api/generate") == 1


def test_ollama_list_ps_show_version(client, ollama):
    assert [m.model for m in client.list().models] == ["llama3.2:1b", "deepseek-r1:8b", "qwen2.5:0.5b"]
    client.chat(model=MODEL, messages=[], keep_alive="10m")  # an empty chat loads the model
    assert [m.model for m in client.ps().models] == [MODEL]
    assert client.show(MODEL).details.family == "llama"
    assert httpx.get(f"{client._client.base_url}/api/version").json()["version"]


def test_ollama_embed_is_cached_by_input(client, ollama):
    first = client.embed(model=MODEL, input=["one", "two"])
    again = client.embed(model=MODEL, input=["one", "two"])
    other = client.embed(model=MODEL, input="three")
    assert len(first.embeddings) == 2 and first.embeddings == again.embeddings
    assert len(other.embeddings) == 1
    assert len([r for r in ollama.requests if r.path == "/api/embed"]) == 2


def test_ten_identical_streaming_calls_reach_ollama_once(client, ollama):
    ollama.configure(first_token_delay=0.3, token_delay=0.01, token_count=12)

    def run(_: int) -> str:
        return "".join(
            c.message.content for c in client.chat(model=MODEL, messages=messages("same"), stream=True)
        )

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(run, range(10)))
    assert set(answers) == {expected(ollama_body("same"), 12)}
    assert ollama.calls_for(ollama_body("same")) == 1


def test_ollama_errors_in_ollamas_shape(client, server, ollama):
    with pytest.raises(ollama_sdk.ResponseError) as missing:
        client.chat(model="nosuch:1b", messages=QUESTION)
    assert missing.value.status_code == 404 and "nosuch:1b" in missing.value.error
    for name in ("pull", "delete", "create", "copy", "push"):
        r = httpx.post(f"{server.url}/api/{name}", json={"model": MODEL})
        assert r.status_code == 403 and "disabled" in r.json()["error"]
    assert not [r for r in ollama.requests if r.path in ("/api/pull", "/api/delete", "/api/create")]


def test_queue_full_is_ollamas_busy_503(start_server, ollama):
    ollama.configure(first_token_delay=2)
    server = start_server(QUEUE_MAX_QUEUE_SIZE=1)
    client = ollama_sdk.Client(host=server.url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.chat, model=MODEL, messages=messages("one"))
        import time

        while ollama.stats()["in_flight"] == 0:
            time.sleep(0.02)
        waiting = pool.submit(client.chat, model=MODEL, messages=messages("two"))
        while httpx.get(f"{server.url}/api/chat-queue").json()["queue_length"] == 0:
            time.sleep(0.02)
        with pytest.raises(ollama_sdk.ResponseError) as busy:
            client.chat(model=MODEL, messages=messages("three"))
        running.result(), waiting.result()
    assert busy.value.status_code == 503
    assert busy.value.error == "server busy, please try again.  maximum pending requests exceeded"


# Ollama's OpenAI layer samples at temperature 1 and top_p 1 unless told otherwise.
OPENAI_DEFAULTS = {"options": {"temperature": 1.0, "top_p": 1.0}}


def test_openai_chat_completion_and_cache(oai, ollama):
    first = oai.chat.completions.create(model=MODEL, messages=QUESTION)
    again = oai.chat.completions.create(model=MODEL, messages=QUESTION)
    answer = expected(ollama_body("Why is the sky blue?", **OPENAI_DEFAULTS))
    assert first.object == "chat.completion" and first.choices[0].message.content == answer
    assert first.choices[0].finish_reason == "stop" and again.choices[0].message.content == answer
    assert first.usage.completion_tokens == 8 and first.usage.total_tokens == first.usage.prompt_tokens + 8
    assert ollama.calls_for(ollama_body("Why is the sky blue?", **OPENAI_DEFAULTS)) == 1


def test_openai_streaming_with_usage(oai, ollama):
    stream = oai.chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(ollama_body("Why is the sky blue?", **OPENAI_DEFAULTS))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 8


def test_openai_parameters_map_to_ollama_options(oai, ollama):
    oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, *QUESTION],
        temperature=0.3,
        max_tokens=5,
        stop="\n",
        response_format={"type": "json_object"},
    )
    sent = ollama.generation_requests()[-1].body
    assert sent["options"] == {"temperature": 0.3, "num_predict": 5, "stop": ["\n"], "top_p": 1.0}
    assert sent["format"] == "json" and sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_openai_models_and_errors(oai, ollama):
    assert [m.id for m in oai.models.list()] == ["llama3.2:1b", "deepseek-r1:8b", "qwen2.5:0.5b"]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nosuch:1b", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    assert bad.value.body["code"] == "unsupported_parameter"
