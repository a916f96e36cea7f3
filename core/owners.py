"""Who an owner is, and the rules configured for it (``[owners.<name>]`` over ``[fairness]``).

An owner is an API key's name; without keys, the anonymous owner ``""``. A trusted front-end may
name its end user (``[fairness] trusted_user_header``): the owner is then ``<key>/<user>`` (or
``proxy/<user>`` from a trusted address), and each such user gets the rules of the key (or of the
defaults) for itself. The *account* is the configured part (``<key>``, ``proxy``, ``anonymous``):
metrics are labelled by it, so their cardinality stays bounded by the configuration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.conf import settings

WINDOWS = ("hour", "day", "month")


@dataclass(frozen=True)
class OwnerRules:
    weight: float
    max_priority: int | None
    max_in_flight: int
    max_pending: int
    max_streams: int
    forward_user: bool
    # (unit, window) -> limit, unit "tokens" or "gpu_seconds", window in WINDOWS
    quotas: tuple[tuple[str, str, float], ...]

    @property
    def has_quota(self) -> bool:
        return bool(self.quotas)


def account_of(owner: str) -> str:
    """The configured part of an owner: what metrics and owner rules are keyed by."""
    if not owner:
        return "anonymous"
    return owner.split("/", 1)[0]


def rules_for(owner: str) -> OwnerRules:
    """The rules that apply to ``owner`` (each forwarded user has its key's rules for itself)."""
    global _owners_seen
    if settings.OWNERS is not _owners_seen:
        # Another [owners] table (tests override the setting). Compared by identity with the table
        # held here: an id alone can be reused by a new table once the old one is freed.
        _rules.cache_clear()
        _owners_seen = settings.OWNERS
    return _rules(account_of(owner), settings.FAIRNESS_DEFAULT_WEIGHT)


_owners_seen: object = None


@functools.lru_cache(maxsize=4096)
def _rules(account: str, default_weight: float) -> OwnerRules:
    entry = settings.OWNERS.get(account)
    quotas: list[tuple[str, str, float]] = []
    if entry is not None:
        for unit in ("tokens", "gpu_seconds"):
            for window in WINDOWS:
                limit = getattr(entry, f"{unit}_per_{window}")
                if limit is not None:
                    quotas.append((unit, window, float(limit)))

    def pick(name: str, default: int) -> int:
        value = getattr(entry, name, None) if entry is not None else None
        return default if value is None else int(value)

    weight = entry.weight if entry is not None and entry.weight is not None else default_weight
    return OwnerRules(
        weight=float(weight),
        max_priority=entry.max_priority if entry is not None else None,
        max_in_flight=pick("max_in_flight", settings.FAIRNESS_MAX_IN_FLIGHT),
        max_pending=pick("max_pending", settings.FAIRNESS_MAX_PENDING),
        max_streams=pick("max_streams", settings.MAX_CONCURRENT_STREAMS),
        forward_user=bool(entry.forward_user) if entry is not None else False,
        quotas=tuple(quotas),
    )


def forwarded_owner(base: str, user: str) -> str:
    """The owner of an end user a trusted front-end named."""
    return f"{base or 'proxy'}/{user}"
