"""The home page: panels for each role the user holds at their current institution.

``settings.HOME_PANELS`` lists providers, lowest layer first. A provider is
``provider(request, institution, roles) -> list[Panel]`` (``institution`` may be
None, ``roles`` is the set of role values at it); an app adds its own panels
(a reading worklist, today's orders) by appending its provider there. Panels
are sorted by ``order``; give related panels nearby numbers (role panels of
this module use 100–600).

A provider that shows patient data records a ``*.list`` audit event for what
it showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.module_loading import import_string

from . import access, audit
from .models import AuditEvent, Institution, Membership, Role

STUDY_ROWS = 25


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


def _today_start(institution: Institution) -> datetime:
    """Midnight of the institution's local day, as an aware datetime."""
    try:
        zone = ZoneInfo(institution.time_zone)
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")
    local = timezone.now().astimezone(zone)
    return datetime.combine(local.date(), time.min, tzinfo=zone)


def _studies(request: HttpRequest, panel: str, queryset: Any, institution: Institution) -> list[Any]:
    rows = list(queryset.select_related("patient", "institution")[:STUDY_ROWS])
    if rows:
        audit.record(
            "study.list",
            request=request,
            institution=institution,
            object_type="study",
            detail={"panel": panel, "study_ids": [str(s.pk) for s in rows]},
        )
    return rows


def role_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """The platform's own panels: one per role, plus the platform administrator's."""
    user = request.user
    panels: list[Panel] = []
    if getattr(user, "is_platform_admin", False):
        panels.append(platform_panel())
    if institution is None:
        return panels
    Study = apps.get_model("archive", "Study")
    mine = access.visible_studies(user).filter(institution=institution)

    def studies_panel(role: Role, title: str, queryset: Any, order: int, empty: str, **extra: Any) -> Panel:
        rows = _studies(request, role.value, queryset, institution)
        context = {"studies": rows, "count": queryset.count(), "empty": empty, **extra}
        return Panel(title, "pacs_cloud/home/studies.html", context, order=order, role=role.label)

    if Role.TECHNOLOGIST in roles:
        received = mine.filter(received_at__gte=_today_start(institution)).order_by("-received_at")
        panels.append(
            studies_panel(Role.TECHNOLOGIST, "Received today", received, 100, "No study has arrived today yet.")
        )
    if Role.RADIOLOGIST in roles:
        waiting = mine.filter(state__in=[Study.State.COMPLETE, Study.State.ROUTED]).order_by("received_at")
        panels.append(
            studies_panel(
                Role.RADIOLOGIST,
                "Waiting for a report",
                waiting,
                200,
                "Nothing is waiting for a report.",
                oldest_first=True,
            )
        )
    if Role.REFERRAL_COORDINATOR in roles:
        shared = access.visible_studies(user).exclude(institution=institution).order_by("-received_at")
        panels.append(
            studies_panel(
                Role.REFERRAL_COORDINATOR,
                "Shared with us by other institutions",
                shared,
                300,
                "No other institution shares a study with you at the moment.",
                show_institution=True,
            )
        )
    if Role.CLINICIAN in roles:
        reported = mine.filter(state__in=[Study.State.REPORTED, Study.State.AMENDED]).order_by("-completed_at")
        panels.append(
            studies_panel(
                Role.CLINICIAN, "Recently reported", reported, 400, "No study of your institution has a report yet."
            )
        )
    if Role.INSTITUTION_ADMIN in roles:
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


def platform_panel() -> Panel:
    Study = apps.get_model("archive", "Study")
    studies = dict(Study.objects.values_list("institution").annotate(n=Count("id")))
    institutions = Institution.objects.annotate(
        members=Count("memberships__user", filter=Q(memberships__is_active=True), distinct=True)
    ).order_by("name")
    security = AuditEvent.objects.filter(action__in=["auth.login.failed", "auth.lockout"]).order_by("-id")[:15]
    return Panel(
        "Platform",
        "pacs_cloud/home/platform.html",
        {
            "institutions": [(i, studies.get(i.pk, 0)) for i in institutions],
            "security": list(security),
        },
        order=50,
        role="Platform administrator",
    )
