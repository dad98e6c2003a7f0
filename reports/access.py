"""Who may see and write reports, built on ``archive.access`` and ``workflow.access``.

A report is visible exactly when its study is (``archive.access``: a member
with a clinical role at the study's hospital, or anyone holding a grant on
the study through a reading task, a referral or a share). Writers are the
study's radiologists and the holder of a reading task on it (the reading
workflow's definition of "held"). Lookups raise ``Http404`` alike for
missing and not-yours.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from django.http import Http404

from archive.access import can_view_study, study_reach
from pacs_cloud import access
from pacs_cloud.models import Role
from workflow.access import held_tasks

from .models import CriticalResult, Report, ReportTemplate


def report_rules(user: Any) -> list[Q]:
    """:func:`visible_reports` as disjoint filters on reports, each walking its own index (for paged searches)."""
    return study_reach(user).parts(study="study_id")


def visible_reports(user: Any) -> QuerySet[Report]:
    """Reports of every study ``user`` may open (a report's institution is its study's)."""
    return Report.objects.filter(study_reach(user).q(study="study_id"))


def access_report(user: Any, pk: object) -> Report:
    try:
        key = UUID(str(pk))
    except ValueError:
        raise Http404("No such report") from None
    report = (
        Report.objects.select_related("study__patient", "institution", "author", "reading_task").filter(pk=key).first()
    )
    if report is None or not can_view_study(user, report.study):
        raise Http404("No such report")
    return report


def held_task(user: Any, study: Any) -> Any:
    """The reading task on ``study`` that ``user`` holds, if any."""
    return held_tasks(user).filter(study=study).order_by("-claimed_at").first()


def may_author(user: Any, study: Any) -> bool:
    """A radiologist of the study's hospital, or the holder of a reading task on it (a pool reader)."""
    if not can_view_study(user, study):
        return False
    if access.has_role(user, study.institution_id, Role.RADIOLOGIST):
        return True
    return held_task(user, study) is not None


def access_template(user: Any, pk: object) -> ReportTemplate:
    """A template of an institution the caller reads for or administers."""
    try:
        key = UUID(str(pk))
    except ValueError:
        raise Http404("No such template") from None
    row = ReportTemplate.objects.filter(pk=key, institution_id__in=template_institutions(user)).first()
    if row is None:
        raise Http404("No such template")
    return row


def template_institutions(user: Any) -> set[Any]:
    """Hospitals whose templates the caller may use: their own, and those of studies they hold a task on."""
    ids = access.institution_ids(user, [Role.RADIOLOGIST, Role.INSTITUTION_ADMIN])
    return ids | set(held_tasks(user).values_list("institution_id", flat=True))


def visible_critical_results(user: Any) -> QuerySet[CriticalResult]:
    """Critical results addressed to the caller, or to the clinicians (or, once escalated, coordinators) of their hospital."""
    clinicians = access.institution_ids(user, [Role.CLINICIAN])
    coordinators = access.institution_ids(user, [Role.REFERRAL_COORDINATOR])
    return CriticalResult.objects.filter(
        Q(recipient_id=getattr(user, "pk", None))
        | Q(recipient__isnull=True, institution_id__in=clinicians)
        | Q(escalated_at__isnull=False, institution_id__in=coordinators)
    )


def access_critical_result(user: Any, pk: object) -> CriticalResult:
    try:
        key = UUID(str(pk))
    except ValueError:
        raise Http404("No such critical result") from None
    row = visible_critical_results(user).select_related("report__study__patient").filter(pk=key).first()
    if row is None:
        raise Http404("No such critical result")
    return row
