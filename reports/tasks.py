"""Celery tasks of reports: exports of signed versions, critical-result mail, the periodic sweep.

Each takes ids only, re-reads its rows and is safe to run twice. The export
rows (``ReportExport``) are the outbox: a lost message is picked up by the
sweep, a failure is retried with a growing delay up to
``REPORTS_EXPORT_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from .models import CriticalResult, ReportExport

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def export_report_version(version_id: str) -> int:
    """Every pending export of one version."""
    from .actions import do_run_export

    done = 0
    for row in ReportExport.objects.filter(version_id=uuid.UUID(version_id), state=ReportExport.State.PENDING):
        done += do_run_export(row)
    return done


@shared_task(ignore_result=True)
def mail_critical_result(critical_id: str, event: str) -> int:
    """E-mail the people who must act on a critical result (Django's mail backend)."""
    from .actions import critical_recipients

    row = CriticalResult.objects.select_related("report", "recipient").filter(pk=critical_id).first()
    if row is None or (event == "flagged" and row.acknowledged_at is not None):
        return 0
    to = [u.email for u in critical_recipients(row, event) if u.email]
    if not to:
        return 0
    report = row.report
    subject = (
        f"Critical result: {report.description or 'imaging study'} {report.accession_number}"
        if event == "flagged"
        else f"Unacknowledged critical result: {report.accession_number}"
    )
    body = (
        f"A radiologist flagged a critical result on the report of {report.description or 'a study'} "
        f"(accession {report.accession_number}).\n\n{row.note}\n\n"
        f"Open and acknowledge it: {settings.CLOUD_URL}/reports/{report.pk}/\n"
    )
    if event == "escalated":
        body = "Nobody acknowledged this critical result in time; it is escalated to you.\n\n" + body
    return send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to)


@shared_task(ignore_result=True)
def sweep() -> dict[str, Any]:
    """Escalate overdue critical results and run exports that are due (Celery beat)."""
    from .actions import do_escalate_critical_results, do_run_export

    escalated = do_escalate_critical_results()
    due = list(
        ReportExport.objects.filter(state=ReportExport.State.PENDING, next_attempt_at__lte=timezone.now()).values_list(
            "pk", flat=True
        )[:200]
    )
    exported = sum(do_run_export(ReportExport(pk=pk)) for pk in due)
    return {"escalated": escalated, "exported": exported}
