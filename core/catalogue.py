"""What the gateway knows about each model from Ollama's ``/api/show``: its capabilities and
architecture, read once per model and remembered.

Per process by nature (each process asks Ollama once per model and then remembers for
FACTS_TTL_SECONDS); the answer is the same in every process, so nothing needs sharing. A model
Ollama could not describe (down, unknown) is asked again after FAILED_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings

from core import servers
from core.errors import OllamaError

logger = logging.getLogger(__name__)

FACTS_TTL_SECONDS = 600.0
FAILED_TTL_SECONDS = 5.0
# Ollama's scheduler loads these architectures with num_parallel 1 whatever OLLAMA_NUM_PARALLEL
# says ("Some architectures are not safe with num_parallel > 1", server/sched.go), and models
# without the completion capability (embedding models) likewise.
ONE_AT_A_TIME_ARCHITECTURES = frozenset(
    {
        "mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe",
        "nemotron_h", "nemotron_h_moe", "nemotron_h_omni",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ModelFacts:
    capabilities: frozenset[str]
    architecture: str = ""

    @property
    def thinks(self) -> bool:
        return "thinking" in self.capabilities

    @property
    def one_at_a_time(self) -> bool:
        """Ollama runs it one generation at a time (a higher cap only queues in Ollama's memory)."""
        known = bool(self.capabilities)
        return known and (
            "completion" not in self.capabilities or self.architecture in ONE_AT_A_TIME_ARCHITECTURES
        )


UNKNOWN = ModelFacts(frozenset())
_facts: dict[str, tuple[float, ModelFacts]] = {}
# The question in flight per model and server: a burst of requests for a model not yet known (a
# process just started, 1,000 requests at once) asks Ollama once, not once per request.
_asking: dict[tuple[str, str | None], asyncio.Task[ModelFacts]] = {}


async def model_facts(model: str, server: str | None = None) -> ModelFacts:
    """The model's capabilities and architecture, as ``server`` (the first one when None) describes
    it; UNKNOWN when it cannot say."""
    known = _facts.get(model)
    if known is not None and known[0] > time.monotonic():
        return known[1]
    loop = asyncio.get_running_loop()
    key = (model, server)
    task = _asking.get(key)
    if task is None or task.done() or task.get_loop() is not loop:
        task = _asking[key] = loop.create_task(_ask(model, server))
        task.add_done_callback(lambda done: _asking.pop(key) if _asking.get(key) is done else None)
    return await asyncio.shield(task)  # a caller that leaves does not cancel the others' answer


async def _ask(model: str, server: str | None) -> ModelFacts:
    now = time.monotonic()
    try:
        shown = await servers.client(server).show(model)
    except OllamaError as exc:
        logger.debug("no facts for %s: %s", model, exc.message)
        _facts[model] = (now + FAILED_TTL_SECONDS, UNKNOWN)
        return UNKNOWN
    facts = ModelFacts(
        capabilities=frozenset(str(c) for c in shown.get("capabilities") or ()),
        architecture=str((shown.get("model_info") or {}).get("general.architecture", "")),
    )
    if len(_facts) > 10_000:
        _facts.clear()
    _facts[model] = (now + FACTS_TTL_SECONDS, facts)
    return facts


def model_cap(model: str, facts: ModelFacts) -> int:
    """Generations of ``model`` allowed at once: ``[models."<name>"] max_concurrent``, else 1 for
    a model Ollama runs one at a time, else 0 (no cap of its own: ``[queue] max_concurrent``)."""
    configured = settings.MODELS.get(model)
    if configured is not None and configured.max_concurrent is not None:
        return int(configured.max_concurrent)
    return 1 if facts.one_at_a_time else 0
