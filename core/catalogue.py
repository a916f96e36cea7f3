"""What the gateway knows about each model from Ollama's ``/api/show``: its capabilities and
architecture, read once per model and remembered.

Per process by nature (each process asks Ollama once per model and then remembers for
FACTS_TTL_SECONDS); the answer is the same in every process, so nothing needs sharing. A model
Ollama could not describe (down, unknown) is asked again after FAILED_TTL_SECONDS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from core.errors import OllamaError
from core.ollama import get_client

logger = logging.getLogger(__name__)

FACTS_TTL_SECONDS = 600.0
FAILED_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class ModelFacts:
    capabilities: frozenset[str]
    architecture: str = ""

    @property
    def thinks(self) -> bool:
        return "thinking" in self.capabilities


UNKNOWN = ModelFacts(frozenset())
_facts: dict[str, tuple[float, ModelFacts]] = {}


async def model_facts(model: str) -> ModelFacts:
    """The model's capabilities and architecture (UNKNOWN when Ollama cannot say)."""
    now = time.monotonic()
    known = _facts.get(model)
    if known is not None and known[0] > now:
        return known[1]
    try:
        shown = await get_client().show(model)
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


async def effective_think(model: str, think: bool | str | None) -> bool | str | None:
    """``think`` as Ollama will apply it: omitted means on for a model that can think."""
    if think is not None:
        return think
    return True if (await model_facts(model)).thinks else None
