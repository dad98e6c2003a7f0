"""Template context: the signed-in user's memberships and current institution.

Rendering a page also activates the current institution's time zone, so the
page's times (``|when``, ``|date``) read in that zone
(:mod:`pacs_cloud.lib.local_time`); :func:`pacs_cloud.middleware.time_zone`
puts UTC back after every request.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from . import access
from .lib.local_time import zone
from .tenancy import current_membership_context


def tenancy(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"current_time_zone": "UTC"}
    context = current_membership_context(request, access.memberships(user))
    current = context["current_institution"]
    context["current_time_zone"] = str(zone(current.time_zone if current else None))
    timezone.activate(zone(context["current_time_zone"]))
    return context
