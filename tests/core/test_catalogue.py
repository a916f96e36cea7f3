"""What the gateway learns from Ollama's /api/show, against the emulator over loopback."""

from __future__ import annotations

import asyncio

import pytest

from core import catalogue, servers
from tests.fake_ollama import FakeOllama


@pytest.fixture
def fresh(ollama: FakeOllama, settings):
    settings.OLLAMA_API_URL = ollama.url
    settings.OLLAMA_SERVERS = []
    catalogue._facts.clear()
    yield ollama
    catalogue._facts.clear()


def shows(ollama: FakeOllama) -> int:
    return sum(1 for r in ollama.requests if r.path == "/api/show")


def test_a_burst_for_a_model_not_yet_known_asks_ollama_once(fresh: FakeOllama):
    async def burst() -> list[catalogue.ModelFacts]:
        try:
            return await asyncio.gather(*(catalogue.model_facts("deepseek-r1:8b") for _ in range(50)))
        finally:
            await servers.close_clients()

    facts = asyncio.run(burst())
    assert all(f.thinks for f in facts) and shows(fresh) == 1
    asyncio.run(burst())  # remembered: no second question
    assert shows(fresh) == 1


def test_a_caller_that_leaves_does_not_take_the_answer_from_the_others(fresh: FakeOllama):
    async def two() -> catalogue.ModelFacts:
        try:
            first = asyncio.ensure_future(catalogue.model_facts("deepseek-r1:8b"))
            second = asyncio.ensure_future(catalogue.model_facts("deepseek-r1:8b"))
            await asyncio.sleep(0)  # both waiting on the one question
            first.cancel()
            return await second
        finally:
            await servers.close_clients()

    assert asyncio.run(two()).thinks and shows(fresh) == 1
