"""Value rules shared by the configuration loader and the request schemas, declared once."""

from __future__ import annotations

import re
from typing import Any

# Ollama's keep_alive: a number of seconds (negative = forever) or a Go duration such as "15m" or
# "1h30m" ("µs" and "us" both mean microseconds). A bare numeric *string* Ollama refuses with 400;
# the gateway accepts one and sends it as a number (core.ollama.keep_alive_param).
KEEP_ALIVE_PATTERN = r"^(-?[0-9]+|-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"
_KEEP_ALIVE = re.compile(KEEP_ALIVE_PATTERN)

# Ollama model names: "name", "name:tag", "namespace/name:tag", "host/namespace/name:tag". Each part
# starts with a letter or digit and never holds two dots in a row (no "..", so no path tricks).
_PART = r"[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?"
MODEL_NAME_PATTERN = rf"^{_PART}(/{_PART}){{0,2}}(:[A-Za-z0-9_-](\.?[A-Za-z0-9_-])*\.?)?$"
MODEL_NAME_MAX_LENGTH = 200
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def keep_alive_problem(value: Any) -> str | None:
    """None when ``value`` is a keep_alive Ollama accepts, else what is wrong."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        return None
    if isinstance(value, str) and _KEEP_ALIVE.match(value.strip()):
        return None
    return 'must be seconds (e.g. 900, -1 for forever) or a duration such as "15m" or "1h30m"'


def is_model_name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MODEL_NAME_MAX_LENGTH and bool(_MODEL_NAME.match(value))


def keep_alive_is_zero(value: Any) -> bool:
    """A keep_alive of zero ("0", 0, "0s", "0m"...): the model unloads when the call ends."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str) and _KEEP_ALIVE.match(value.strip()):
        return all(float(n) == 0 for n in re.findall(r"[0-9]+(?:\.[0-9]+)?", value))
    return False
