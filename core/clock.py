"""The time, from one place, so that tests can move it (quota windows, decay)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    """Epoch seconds."""
    return time.time()


def utcnow() -> datetime:
    return datetime.fromtimestamp(now(), tz=UTC)
