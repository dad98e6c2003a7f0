"""The home page: panels for each role the user holds at their current institution.

``settings.HOME_PANELS`` lists providers, lowest layer first. A provider is
``provider(request, institution, roles) -> list[Panel]`` (``institution`` may be
None, ``roles`` is the set of role values at it); an app adds its own panels
(the archive's study lists, a reading worklist, today's orders) by appending
its provider there. Panels are sorted by ``order``; give related panels nearby
numbers (the clinical roles' study lists use 100–400, the institution
administrator's panel 600).

A provider that shows patient data records a ``*.list`` audit event for what
it showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils.module_loading import import_string

from .models import AuditEvent, Institution, Membership, Role


@dataclass
class Panel:
    title: str
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    order: int = 1000
    role: str = ""  # the role it serves, shown as a badge; blank for none


def collect(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    panels: list[Panel] = []
    for dotted in settings.HOME_PANELS:
        panels.extend(import_string(dotted)(request, institution, roles) or [])
    return sorted(panels, key=lambda p: p.order)


def role_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """The platform's own panels: the institution administrator's and the platform administrator's.

    The clinical roles' panels come from the apps that hold their data (the
    archive's study lists, the reading worklist, the reports).
    """
    panels: list[Panel] = []
    if getattr(request.user, "is_platform_admin", False):
        panels.append(platform_panel())
    if institution is not None and Role.INSTITUTION_ADMIN in roles:
        panels.append(admin_panel(institution))
    return panels


def admin_panel(institution: Institution) -> Panel:
    rows = Membership.objects.filter(institution=institution)
    by_role: dict[str, Any] = {
        row["role"]: row
        for row in rows.values("role").annotate(
            active=Count("id", filter=Q(is_active=True, user__is_active=True)),
            suspended=Count("id", filter=Q(is_active=False) | Q(user__is_active=False)),
        )
    }
    counts = [(role.label, by_role.get(role.value, {}).get("active", 0)) for role in Role]
    suspended = sum(row["suspended"] for row in by_role.values())
    activity = AuditEvent.objects.filter(institution_id=institution.pk).exclude(object_type="study").order_by("-id")
    return Panel(
        "Your institution",
        "pacs_cloud/home/institution_admin.html",
        {"counts": counts, "suspended": suspended, "activity": list(activity[:15])},
        order=600,
        role=Role.INSTITUTION_ADMIN.label,
    )


def institution_counts() -> list[tuple[str, dict[Any, int]]]:
    """The extra columns of the platform table: ``settings.HOME_INSTITUTION_COUNTS``, in order.

    Each entry names a function ``() -> (title, {institution id: count})``; an
    app adds its own count (the archive: studies) by appending it there.
    """
    return [import_string(dotted)() for dotted in settings.HOME_INSTITUTION_COUNTS]


def platform_panel() -> Panel:
    counts = institution_counts()
    institutions = Institution.objects.annotate(
        members=Count("memberships__user", filter=Q(memberships__is_active=True), distinct=True)
    ).order_by("name")
    security = AuditEvent.objects.filter(action__in=["auth.login.failed", "auth.lockout"]).order_by("-id")[:15]
    return Panel(
        "Platform",
        "pacs_cloud/home/platform.html",
        {
            "columns": [title for title, _ in counts],
            "institutions": [(i, [by_institution.get(i.pk, 0) for _, by_institution in counts]) for i in institutions],
            "security": list(security),
        },
        order=50,
        role="Platform administrator",
    )
