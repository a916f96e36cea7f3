"""The client matrix: every case runs twice, against the Ollama emulator directly (the control) and
through the live gateway in front of that same emulator, with the real client libraries.

A case that passes on ``emulator`` and fails on ``gateway`` points at the gateway. The ``target``
fixture gives the base URL and builds each library's client for it; the emulator (``target.ollama``)
tells what reached "Ollama" (the recorded requests, the call counts, the generations in flight).
"""

from __future__ import annotations

import os

# LiteLLM fetches its model cost map from the internet when imported unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# LangChain sends traces to LangSmith only when asked; never from these tests.
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import litellm
import ollama as ollama_sdk
import openai
import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from llama_index.llms.ollama import Ollama as LlamaIndexOllama
from pydantic import BaseModel

from tests.fake_ollama import FakeOllama, GenerationRecord, reply_tokens, thinking_count, thinking_tokens
from tests.fake_ollama.catalogue import build_models
from tests.fake_ollama.rules import plan_tool_calls

MODEL = "llama3.2:1b"  # the gateway's default model; the emulator gives it tool calling
THINKING_MODEL = "deepseek-r1:8b"  # thinks (on unless told otherwise), no tools
THINKING_TOOLS_MODEL = "qwen3:0.6b"  # thinks and calls tools
EMBED_MODEL = "nomic-embed-text:latest"
VISION_MODEL = "gemma3:4b"
MATRIX_MODELS = (MODEL, THINKING_MODEL, THINKING_TOOLS_MODEL, VISION_MODEL, EMBED_MODEL)
TIMEOUT = 30.0
# A 1x1 PNG, as the base64 text Ollama's API takes in a message's "images".
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
PNG_DATA_URL = f"data:image/png;base64,{PNG_B64}"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}


class CityWeather(BaseModel):
    """The structured answer the structured-output cases ask for."""

    city: str
    sunny: bool


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Target:
    """Where a case sends its requests: ``emulator`` (Ollama itself) or ``gateway`` (our service)."""

    name: str
    url: str
    ollama: FakeOllama

    @property
    def via_gateway(self) -> bool:
        return self.name == "gateway"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    # --- the clients ---------------------------------------------------------------------------

    def ollama_client(self) -> ollama_sdk.Client:
        return ollama_sdk.Client(host=self.url, timeout=TIMEOUT)

    def ollama_async_client(self) -> ollama_sdk.AsyncClient:
        return ollama_sdk.AsyncClient(host=self.url, timeout=TIMEOUT)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key="x", max_retries=0, timeout=TIMEOUT)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key="x", max_retries=0, timeout=TIMEOUT)

    def chat_ollama(self, model: str = MODEL, **kwargs: Any) -> ChatOllama:
        return ChatOllama(model=model, base_url=self.url, client_kwargs={"timeout": TIMEOUT}, **kwargs)

    def ollama_embeddings(self, model: str = EMBED_MODEL, **kwargs: Any) -> OllamaEmbeddings:
        return OllamaEmbeddings(model=model, base_url=self.url, client_kwargs={"timeout": TIMEOUT}, **kwargs)

    def chat_openai(self, model: str = MODEL, **kwargs: Any) -> ChatOpenAI:
        return ChatOpenAI(
            model=model, base_url=self.v1, api_key="x", max_retries=0, timeout=TIMEOUT, **kwargs
        )

    def openai_embeddings(self, model: str = EMBED_MODEL, **kwargs: Any) -> OpenAIEmbeddings:
        # check_embedding_ctx_length would fetch a tiktoken vocabulary from the internet.
        return OpenAIEmbeddings(
            model=model,
            base_url=self.v1,
            api_key="x",
            max_retries=0,
            timeout=TIMEOUT,
            check_embedding_ctx_length=False,
            **kwargs,
        )

    def llama_index(self, model: str = MODEL, **kwargs: Any) -> LlamaIndexOllama:
        return LlamaIndexOllama(model=model, base_url=self.url, request_timeout=TIMEOUT, **kwargs)

    def litellm_ollama(self, model: str = MODEL, **kwargs: Any) -> Any:
        """``litellm.completion`` through its native Ollama provider (``/api/chat``)."""
        return litellm.completion(model=f"ollama_chat/{model}", api_base=self.url, timeout=TIMEOUT, **kwargs)

    def litellm_openai(self, model: str = MODEL, **kwargs: Any) -> Any:
        """``litellm.completion`` through its OpenAI provider (``/v1/chat/completions``)."""
        return litellm.completion(
            model=f"openai/{model}", api_base=self.v1, api_key="x", timeout=TIMEOUT, max_retries=0, **kwargs
        )

    # --- what reached Ollama ------------------------------------------------------------------

    def generations(self) -> list[GenerationRecord]:
        """The generations the emulator ran, oldest first; each ``.body`` is the native request
        (for a /v1 surface, Ollama's own translation of it)."""
        return self.ollama.generations_received()

    def last_generation(self) -> GenerationRecord:
        found = self.generations()
        assert found, "no generation reached the emulator"
        return found[-1]

    def upstream_reply(self, generation: GenerationRecord | None = None) -> str:
        """The text the emulator generated for a request it ran (the last one by default)."""
        body = (generation or self.last_generation()).body
        count = self.ollama.settings.token_count
        limit = (body.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and 0 <= limit < count:
            count = limit
        return "".join(reply_tokens(body, count))

    def upstream_thinking(self, generation: GenerationRecord | None = None) -> str:
        """The thinking the emulator streamed for a request it ran (the last one by default)."""
        record = generation or self.last_generation()
        count = thinking_count(record.think, self.ollama.settings.think_token_count)
        return "".join(thinking_tokens(record.body, count))

    def upstream_tool_call(self, generation: GenerationRecord | None = None) -> tuple[str, dict[str, Any]]:
        """The (name, arguments) of the first tool call the emulator made for a request it ran."""
        body = (generation or self.last_generation()).body
        function = plan_tool_calls(body, 1)[0]["function"]
        return function["name"], function["arguments"]

    def wait_idle(self, timeout: float = 1.0) -> float:
        """Wait until no generation is in flight at the emulator; returns the seconds it took."""
        started = time.monotonic()
        while self.ollama.stats()["in_flight"]:
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"{self.name}: a generation is still in flight {timeout}s after the client left "
                    f"({self.ollama.stats()})"
                )
            time.sleep(0.01)
        return time.monotonic() - started


# pytest-django creates the test database only for items that declare it, and the gateway's server
# fixture is requested dynamically: the mark declares it for the gateway cases alone.
@pytest.fixture(params=["emulator", pytest.param("gateway", marks=pytest.mark.django_db(transaction=True))])
def target(request: pytest.FixtureRequest, ollama: FakeOllama) -> Target:
    """The base URL a case talks to: the emulator itself, or the shared live gateway in front of it."""
    if request.param == "gateway":
        url = request.getfixturevalue("server").url
    else:
        url = ollama.url
    return Target(request.param, url, ollama)


@pytest.fixture(autouse=True)
def _matrix_models(ollama: FakeOllama) -> Iterator[None]:
    """The session's emulator holds the default three models; the matrix also needs a thinking
    model with tools, a vision model and an embedding model (from the emulator's catalogue). They
    are added for the test and removed after it, so other suites see the default list."""
    added = build_models([name for name in MATRIX_MODELS if name not in ollama.models])
    ollama.models.update(added)
    yield
    for name in added:
        ollama.models.pop(name, None)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No client library may reach a host but this machine's loopback (cost maps, tokenizers, telemetry)."""
    real: Callable[..., Any] = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            raise socket.gaierror(f"tests/clients may call only 127.0.0.1, not {name!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield
