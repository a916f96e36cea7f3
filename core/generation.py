"""What one generation produced, as Ollama reported it: the final chunk's metrics."""

from __future__ import annotations

from typing import Any

# Ollama's final-chunk metrics: nanoseconds and token counts (each omitted by Ollama when zero).
METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def metrics(final: dict[str, Any]) -> dict[str, int]:
    """Ollama's final-chunk metrics, those it sent."""
    return {key: final[key] for key in METRIC_KEYS if key in final}
