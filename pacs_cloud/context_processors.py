"""Template context: the signed-in user's memberships and current institution."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from . import access
from .tenancy import current_membership_context


def tenancy(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return current_membership_context(request, access.memberships(user))
