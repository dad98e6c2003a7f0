"""The reports' panels on the home page.

Radiologists: the studies they hold a reading task on, one click from a draft
(with the template to start from), and their open drafts. Clinicians: critical
results waiting for their acknowledgement (live over WebSockets) and the
latest signed reports. Coordinators: critical results escalated to them.
Each panel that shows patient data records a ``report.list`` audit event.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from pacs_cloud import audit
from pacs_cloud.home import Panel
from pacs_cloud.models import Institution, Role
from workflow.access import held_tasks

from . import actions
from .access import visible_critical_results, visible_reports
from .models import Report

ROWS = 10


def _audit(request: HttpRequest, institution: Institution | None, panel: str, ids: list[Any]) -> None:
    if ids:
        audit.record(
            "report.list",
            request=request,
            institution=institution,
            object_type="report",
            detail={"panel": panel, "ids": [str(i) for i in ids]},
        )


def report_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    user = request.user
    panels: list[Panel] = []
    critical = list(visible_critical_results(user).filter(acknowledged_at__isnull=True).select_related("report")[:ROWS])
    if critical or Role.CLINICIAN in roles or Role.REFERRAL_COORDINATOR in roles:
        _audit(request, institution, "reports.critical", [c.report_id for c in critical])
        panels.append(
            Panel("Critical results", "reports/home/critical.html", {"critical": critical}, order=150, role="")
        )
    if Role.RADIOLOGIST in roles or held_tasks(user).exists():
        tasks = list(
            held_tasks(user).select_related("study__patient", "institution").order_by("priority_rank", "due_at")[:ROWS]
        )
        drafts = {
            r.study_id: r
            for r in Report.objects.filter(
                author_id=user.pk, study_id__in=[t.study_id for t in tasks], state__in=["draft", "preliminary"]
            )
        }
        rows = [
            {"task": t, "report": drafts.get(t.study_id), "templates": actions.templates_for(t.study)} for t in tasks
        ]
        _audit(request, institution, "reports.to_write", [t.study_id for t in tasks])
        panels.append(
            Panel("Reports to write", "reports/home/reader.html", {"rows": rows}, order=320, role=Role.RADIOLOGIST)
        )
    if Role.CLINICIAN in roles and institution is not None:
        latest = list(
            visible_reports(user)
            .filter(institution=institution, state__in=[Report.State.FINAL, Report.State.AMENDED])
            .order_by("-signed_at")[:ROWS]
        )
        _audit(request, institution, "reports.latest", [r.pk for r in latest])
        panels.append(
            Panel("Latest reports", "reports/home/latest.html", {"reports": latest}, order=160, role=Role.CLINICIAN)
        )
    return panels
