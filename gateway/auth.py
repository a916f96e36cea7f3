"""Who may do what: API keys (each one an owner) and operators (staff sessions or the admin token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from chat.errors import ApiError


def _no_view(request: HttpRequest) -> None:  # pragma: no cover - never called
    return None


async def require_operator(request: HttpRequest) -> str:
    """Allow a correct ``X-Admin-Token`` or a staff session (with its CSRF token); else 401/403.

    Returns who it was, for the log.
    """
    token = request.headers.get("X-Admin-Token", "")
    if token:
        if settings.ADMIN_TOKEN and hmac.compare_digest(token.encode(), settings.ADMIN_TOKEN.encode()):
            return "admin-token"
        raise ApiError("The admin token is not valid.", code="invalid_admin_token", status=403)
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(
            "This operation needs a staff session or the X-Admin-Token header.",
            code="authentication_required",
            status=401,
        )
    if not (user.is_active and user.is_staff):
        raise ApiError("This operation is for staff only.", code="forbidden", status=403)
    # A session cookie rides along on cross-site requests: demand the CSRF token as forms do.
    rejected = CsrfViewMiddleware(_no_view).process_view(request, _no_view, (), {})
    if rejected is not None:
        raise ApiError("CSRF verification failed for this staff session.", code="csrf_failed", status=403)
    return f"staff:{user.get_username()}"


def hash_key(key: str) -> str:
    """What the config holds for an API key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def owner_for_key(presented: str) -> str | None:
    """The name of the configured key ``presented`` is, or None. Compares with every key in
    constant time, so the timing reveals neither which key nor how much of it matched."""
    digest = hash_key(presented).encode()
    found = None
    for name, expected in settings.API_KEYS.items():
        if hmac.compare_digest(digest, expected.encode()):
            found = name
    return found


def new_api_key() -> str:
    return "cbk_" + secrets.token_urlsafe(32)
