"""Usage per owner and model, by hour, in the shared database: what quotas are checked on, what
``/api/usage``, the admin and ``manage.py usage`` show, and the Prometheus usage counters.

A generation is charged once (to the owner of the request that started it; requests that shared it
are not charged again) with Ollama's own figures: prompt and output tokens, and GPU time as
``prompt_eval_duration + eval_duration``. It is written in the transaction that completes the
generation, so a quota check made under the queue lock sees every finished generation. A cache hit
costs no GPU time and is counted apart, buffered like the counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Q, Sum

from core.clock import utcnow
from stats.counters import Buffer
from stats.models import Usage

WINDOWS = ("hour", "day", "month")
_TABLE = Usage._meta.db_table
_COLUMNS = ("requests", "cache_hits", "prompt_tokens", "output_tokens", "gpu_ns")


def window_start(window: str, at: datetime | None = None) -> datetime:
    """The start (UTC) of the hour, day or month ``at`` falls in."""
    at = at or utcnow()
    hour = at.replace(minute=0, second=0, microsecond=0)
    if window == "hour":
        return hour
    day = hour.replace(hour=0)
    return day if window == "day" else day.replace(day=1)


def window_end(window: str, at: datetime | None = None) -> datetime:
    start = window_start(window, at)
    if window == "hour":
        return start + timedelta(hours=1)
    if window == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def _add(owner: str, model: str, hour: datetime, amounts: dict[str, int]) -> None:
    """Add to one (owner, model, hour) row, creating it: one statement."""
    columns = [c for c in _COLUMNS if amounts.get(c)]
    if not columns:
        return
    names = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = "{_TABLE}"."{c}" + excluded."{c}"' for c in columns)
    zeros = [c for c in _COLUMNS if c not in columns]
    sql = (
        f'INSERT INTO "{_TABLE}" ("owner", "model", "hour", {names}'  # noqa: S608 - the model's own table and columns
        + "".join(f', "{c}"' for c in zeros)
        + f") VALUES (%s, %s, %s{', %s' * len(columns)}{', 0' * len(zeros)}) "
        f'ON CONFLICT ("owner", "model", "hour") DO UPDATE SET {updates}'
    )
    params: list[Any] = [owner, model, connection.ops.adapt_datetimefield_value(hour)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *(amounts[c] for c in columns)])


@dataclass(frozen=True)
class Cost:
    """What one generation cost, from Ollama's final chunk."""

    prompt_tokens: int
    output_tokens: int
    gpu_ns: int

    @property
    def gpu_seconds(self) -> float:
        return self.gpu_ns / 1e9

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @classmethod
    def of(cls, final: dict[str, Any], wall_seconds: float = 0.0) -> Cost:
        gpu = int(final.get("prompt_eval_duration", 0) or 0) + int(final.get("eval_duration", 0) or 0)
        if not gpu:  # no timings from Ollama (an embedding, say): the time it took is the best measure
            gpu = int(final.get("total_duration", 0) or 0) or int(wall_seconds * 1e9)
        return cls(int(final.get("prompt_eval_count", 0) or 0), int(final.get("eval_count", 0) or 0), gpu)


def charge(*, owner: str, model: str, cost: Cost) -> None:
    """Charge one generation (blocking; inside the transaction that completes it)."""
    amounts = {
        "requests": 1,
        "prompt_tokens": cost.prompt_tokens,
        "output_tokens": cost.output_tokens,
        "gpu_ns": cost.gpu_ns,
    }
    _add(owner, model, window_start("hour"), amounts)


def _write_hits(amounts: Any) -> None:
    for (owner, model, hour), hits in amounts.items():
        _add(owner, model, datetime.fromisoformat(hour), {"cache_hits": hits})


_hits: Buffer[tuple[str, str, str]] = Buffer("usage", _write_hits)


def record_hit(*, owner: str, model: str) -> None:
    """A request answered from the cache (written within a second)."""
    _hits.add({(owner, model, window_start("hour").isoformat()): 1})


def flush_hits() -> None:
    _hits.flush()


def totals(*, owner: str, window: str, at: datetime | None = None) -> dict[str, float]:
    """An owner's tokens and GPU seconds in the current ``window``."""
    row = Usage.objects.filter(owner=owner, hour__gte=window_start(window, at)).aggregate(
        prompt=Sum("prompt_tokens"), output=Sum("output_tokens"), gpu=Sum("gpu_ns")
    )
    return {
        "tokens": float((row["prompt"] or 0) + (row["output"] or 0)),
        "gpu_seconds": (row["gpu"] or 0) / 1e9,
    }


def exhausted(*, owner: str, quotas: tuple[tuple[str, str, float], ...]) -> tuple[str, str, datetime] | None:
    """The first quota (unit, window) the owner has used up, with the window's end; else None."""
    now = utcnow()
    used: dict[str, dict[str, float]] = {}
    for unit, window, limit in quotas:
        figures = used.setdefault(window, totals(owner=owner, window=window, at=now))
        if figures[unit] >= limit:
            return unit, window, window_end(window, now)
    return None


def report(*, owner: str | None, window: str) -> list[dict[str, Any]]:
    """Usage in the current window, per owner and model: an owner's own (its end users' included,
    when a front-end names them), or everyone's (``owner=None``)."""
    flush_hits()
    rows = Usage.objects.filter(hour__gte=window_start(window))
    if owner is not None:
        rows = (
            rows.filter(Q(owner=owner) | Q(owner__startswith=f"{owner}/")) if owner else rows.filter(owner="")
        )
    grouped = rows.values("owner", "model").annotate(
        requests=Sum("requests"), cache_hits=Sum("cache_hits"), prompt_tokens=Sum("prompt_tokens"),
        output_tokens=Sum("output_tokens"), gpu_ns=Sum("gpu_ns"),
    ).order_by("owner", "model")  # fmt: skip
    return [
        {
            "owner": row["owner"],
            "model": row["model"],
            "requests": row["requests"],
            "cache_hits": row["cache_hits"],
            "prompt_tokens": row["prompt_tokens"],
            "output_tokens": row["output_tokens"],
            "tokens": row["prompt_tokens"] + row["output_tokens"],
            "gpu_seconds": round(row["gpu_ns"] / 1e9, 6),
        }
        for row in grouped
    ]
