"""The byte-bounded LRU caches on the real backends of this run (database cache or Redis)."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.db import connection

from chat import caches as caches_module
from chat.caches import RESPONSES, conversation_cache, response_cache, response_key
from chat.models import CacheEntry
from stats import counters

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty(clean_caches):
    yield
    response_cache.clear()


def value(i: int, size: int = 1000) -> dict:
    return {"chunks": [f"{i:04d}" + "x" * size], "final": {"done_reason": "stop"}}


def test_key_covers_everything_that_changes_the_answer_and_nothing_else():
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    def key(endpoint: str = "chat", owner: str = "", **changes: object) -> str:
        return response_key(endpoint=endpoint, request={**request, **changes}, owner=owner)

    base = key()
    assert base.startswith("v2:") and len(base) == 67
    assert key() == base
    history = [{"role": "user", "content": "earlier"}, *request["messages"]]
    assert key(messages=history) != base  # never only the last message
    for change in ({"options": {"temperature": 0.1}}, {"format": "json"}, {"model": "n"}, {"think": True},
                   {"tools": [{"type": "function"}]}):  # fmt: skip
        assert key(**change) != base, change
    assert key(owner="alice") != base and key(endpoint="generate") != base
    # How the answer is delivered is not what it is.
    assert key(stream=True) == base and key(keep_alive="1h") == base


class Clock:
    """The cache's clock, advanced by the test (LRU order has a one-second resolution)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


def test_filling_past_the_limit_keeps_bytes_under_it_and_the_most_recent_entries(settings, monkeypatch):
    settings.CACHE_MAX_SIZE_MB = 10_000 / (1024 * 1024)  # 10,000 bytes: about 9 entries
    clock = Clock()
    monkeypatch.setattr(caches_module, "time", clock)
    for i in range(30):
        clock.now += 2
        assert response_cache.set(f"k{i}", value(i))
        # Reading k0 each time keeps it the most recently used.
        assert response_cache.get("k0") is not None
    totals = response_cache.totals()
    assert totals.size_bytes <= 10_000, totals
    assert response_cache.get("k0") is not None and response_cache.get("k29") is not None
    assert response_cache.get("k1") is None and response_cache.get("k15") is None
    kept = set(CacheEntry.objects.filter(alias=RESPONSES).values_list("key", flat=True))
    assert kept == {"k0", *(f"k{i}" for i in range(30 - len(kept) + 1, 30))}
    assert counters.read([counters.RESPONSE_EVICTIONS])[counters.RESPONSE_EVICTIONS] == 30 - len(kept)


def test_sizes_are_the_bytes_the_backend_stores():
    """The key and the value as the backend holds them (base64 of the pickle in a database cache
    row, the pickle in Redis), not the JSON text (which counted 0.75 of the table)."""
    response_cache.set("a", {"chunks": ["héllo"], "final": {}})
    entry = CacheEntry.objects.get(alias=RESPONSES, key="a")
    backend = caches[RESPONSES]
    if isinstance(backend, DatabaseCache):
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT LENGTH("cache_key") + LENGTH("value") FROM "{backend._table}" '
                'WHERE "cache_key" = %s',
                [backend.make_key("a")],
            )
            (stored,) = cursor.fetchone()
    else:
        made = backend.client.make_key("a")  # django-redis
        stored = len(str(made)) + backend.client.get_client().strlen(made)
    assert entry.size_bytes == stored
    assert response_cache.totals() == caches_module.CacheTotals(entries=1, size_bytes=stored)


def test_hits_and_misses_are_counted():
    response_cache.set("a", value(1))
    response_cache.get("a")
    response_cache.get("a")
    response_cache.get("missing")
    read = counters.read([counters.RESPONSE_HITS, counters.RESPONSE_MISSES])
    assert read == {counters.RESPONSE_HITS: 2, counters.RESPONSE_MISSES: 1}


def test_a_value_the_backend_lost_is_a_miss_and_leaves_the_index(settings):
    response_cache.set("a", value(1))
    caches[RESPONSES].delete("a")  # expired or evicted by the backend itself
    assert response_cache.get("a") is None
    assert response_cache.totals().entries == 0


def test_clear_removes_only_this_alias(settings):
    response_cache.set("a", value(1))
    conversation_cache.set("c", {"messages": []})
    assert response_cache.clear() == 1
    assert response_cache.get("a") is None and conversation_cache.get("c") == {"messages": []}
    conversation_cache.clear()


def test_a_dead_cache_backend_is_bypassed_not_fatal(settings):
    settings.CACHES = {
        **settings.CACHES,
        RESPONSES: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    assert response_cache.set("a", value(1)) is False
    assert response_cache.get("a") is None
    assert response_cache.totals().entries == 0


def test_a_stored_answer_comes_back_chunk_for_chunk_and_plain_content_is_stored_compactly():
    chunks = [
        {"thinking": "Let me see."},
        {"content": "The "},
        {"content": "answer", "logprobs": [{"token": "answer", "logprob": -0.1}]},
        {"content": ""},
        {"content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
        {"content": " is 42."},
    ]
    assert caches_module.store_response(key="k", endpoint="chat", model="m", chunks=chunks, final={"a": 1})
    entry = response_cache.get("k")
    assert list(caches_module.entry_chunks(entry)) == chunks
    assert entry["chunks"][1] == "The " and entry["chunks"][3] == "" and entry["chunks"][5] == " is 42."
    assert isinstance(entry["chunks"][2], dict) and isinstance(entry["chunks"][4], dict)


def test_readers_of_a_large_answer_share_one_decoded_copy_until_it_changes():
    big = [{"content": "word "} for _ in range(20_000)]  # well over SHARE_DECODED_FROM_BYTES stored
    assert caches_module.store_response(key="big", endpoint="chat", model="m", chunks=big, final={})
    first, second = response_cache.get("big"), response_cache.get("big")
    assert first is second and list(caches_module.entry_chunks(first)) == big
    assert caches_module.store_response(key="small", endpoint="chat", model="m", chunks=big[:3], final={})
    assert response_cache.get("small") is not response_cache.get("small")  # small values: no memo
    # A new answer under the same key is decoded afresh, while a reader still holds the old one.
    changed = [*big[:-1], {"content": "end."}]
    assert caches_module.store_response(key="big", endpoint="chat", model="m", chunks=changed, final={})
    third = response_cache.get("big")
    assert third is not first and list(caches_module.entry_chunks(third)) == changed
    # Nothing keeps a copy once its readers are gone.
    del first, second, third
    assert "big" not in response_cache._shared
    # Conversations are changed and stored back by their readers: never shared.
    assert conversation_cache._shared is None
