"""The browser's current institution (the institution switcher)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from .models import Institution, Membership, Role

SESSION_KEY = "current_institution_id"


def current_institution(request: HttpRequest) -> Institution | None:
    """The institution the user works for in this session.

    By default the one they joined first (their own hospital, for a reader who
    also reads for others); the switcher stores another choice in the session.
    """
    from . import access

    rows = access.memberships(request.user).select_related("institution").order_by("created_at", "institution__name")
    wanted = request.session.get(SESSION_KEY)
    first = None
    for membership in rows:
        if str(membership.institution_id) == wanted:
            return membership.institution
        first = first or membership.institution
    return first


def current_institution_as(request: HttpRequest, *roles: str) -> Institution:
    """The session's institution if the user holds one of ``roles`` there; otherwise the page is not found."""
    from . import access

    institution = current_institution(request)
    if institution is None or not access.has_role(request.user, institution, *roles):
        raise Http404("This page needs another role at your current institution.")
    return institution


def current_membership_context(request: HttpRequest, rows: QuerySet[Membership]) -> dict[str, Any]:
    rows = rows.select_related("institution").order_by("institution__name", "role")
    institutions: dict[Any, Institution] = {}
    for membership in rows:
        institutions[membership.institution_id] = membership.institution
    current = current_institution(request)
    current_roles = sorted({m.role for m in rows if current and m.institution_id == current.pk})
    return {
        "my_institutions": list(institutions.values()),
        "current_institution": current,
        "current_roles": current_roles,
        # For templates: {% if roles.radiologist or roles.clinician %}
        "roles": dict.fromkeys(current_roles, True),
        "current_role_labels": [Role(role).label for role in current_roles],
    }
