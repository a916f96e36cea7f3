"""Who may do what: operators (staff sessions or the admin token) for state-changing operations."""

from __future__ import annotations

import hmac

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
