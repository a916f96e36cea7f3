"""Who may do what: API keys (each one an owner) and operators (staff sessions or the admin token)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware

from core.errors import ApiError, BadRequest, Unauthorized
from core.owners import forwarded_owner, rules_for


def _no_view(request: HttpRequest) -> HttpResponseBase:  # pragma: no cover - never called
    raise AssertionError("the CSRF check only inspects the request")


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


@functools.cache
def _key_table(lines: tuple[str, ...]) -> dict[str, str]:
    """``[security] api_keys`` lines ("name:<sha256>") as name -> hash."""
    return dict(line.split(":", 1) for line in lines)


def key_table() -> dict[str, str]:
    return _key_table(tuple(settings.API_KEYS))


def owner_for_key(presented: str) -> str | None:
    """The name of the configured key ``presented`` is, or None. Compares with every key in
    constant time, so the timing reveals neither which key nor how much of it matched."""
    digest = hash_key(presented).encode()
    found = None
    for name, expected in key_table().items():
        if hmac.compare_digest(digest, expected.encode()):
            found = name
    return found


def new_api_key() -> str:
    return "cbk_" + secrets.token_urlsafe(32)


def authenticate(request: HttpRequest) -> str:
    """The owner a request acts for: the name of its API key when keys are configured (401
    otherwise), else the anonymous owner ""; refined to the end user a trusted front-end names."""
    owner = _key_owner(request)
    header = settings.FAIRNESS_TRUSTED_USER_HEADER
    user = request.headers.get(header, "").strip() if header else ""
    if user and _user_header_trusted(request, owner):
        if not _USER.match(user):
            raise BadRequest(f"{header} must be 1 to 100 printable characters.", code="invalid_user")
        return forwarded_owner(owner, user)
    return owner


_USER = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,99}$")


def _user_header_trusted(request: HttpRequest, owner: str) -> bool:
    """Only a key allowed to (forward_user) or a configured proxy address may name the user."""
    if owner and rules_for(owner).forward_user:
        return True
    return request.META.get("REMOTE_ADDR", "") in settings.FAIRNESS_TRUSTED_PROXIES


def _key_owner(request: HttpRequest) -> str:
    if not settings.API_KEYS:
        return ""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        # Anthropic's clients send the key as x-api-key.
        scheme, presented = "bearer", request.headers.get("X-Api-Key", "")
    if not presented.strip():
        raise Unauthorized("This API needs an API key: Authorization: Bearer <key> (or x-api-key).")
    owner = owner_for_key(presented.strip())
    if owner is None:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    return owner
