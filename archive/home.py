"""The archive's panels on the home page: each clinical role's list of studies.

Technologists see what arrived today, radiologists what waits for a report,
coordinators what other institutions share with them, clinicians what was
reported lately; all through ``archive.access``. Each panel records a
``study.list`` audit event for the studies it showed. The platform
administrator's table of institutions counts their studies
(:func:`studies_per_institution`, listed in ``settings.HOME_INSTITUTION_COUNTS``).
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.home import Panel
from pacs_cloud.models import Institution, Role

from .access import visible_studies
from .models import Study

STUDY_ROWS = 25


def _today_start(institution: Institution) -> datetime:
    """Midnight of the institution's local day, as an aware datetime."""
    try:
        zone = ZoneInfo(institution.time_zone)
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")
    local = timezone.now().astimezone(zone)
    return datetime.combine(local.date(), time.min, tzinfo=zone)


def _studies(request: HttpRequest, panel: str, queryset: QuerySet[Study], institution: Institution) -> list[Study]:
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


def study_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """One list of studies per clinical role held at the current institution (orders 100–400)."""
    if institution is None:
        return []
    user = request.user
    visible = visible_studies(user)
    mine = visible.filter(institution=institution)
    panels: list[Panel] = []

    def studies_panel(role: Role, title: str, queryset: QuerySet[Study], order: int, empty: str, **extra: Any) -> Panel:
        rows = _studies(request, role.value, queryset, institution)
        context = {"studies": rows, "count": queryset.count(), "empty": empty, **extra}
        return Panel(title, "archive/home/studies.html", context, order=order, role=role.label)

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
        shared = visible.exclude(institution=institution).order_by("-received_at")
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
    return panels


def studies_per_institution() -> tuple[str, dict[Any, int]]:
    """The platform table's "Studies" column: how many studies each institution holds (no patient data)."""
    return "Studies", dict(Study.objects.values_list("institution").annotate(n=Count("id")))
