"""Who may see and write reports, built on ``pacs_cloud.access``.

A report is visible exactly when its study is: a member with a clinical role
at the study's hospital, or anyone holding a grant on the study (a reading
task, a referral, a share) sees its reports. Lookups raise ``Http404`` alike
for missing and not-yours.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.apps import apps
from django.db.models import Q, QuerySet
from django.http import Http404

from pacs_cloud import access
from pacs_cloud.models import CLINICAL_ROLES, Role

from .models import CriticalResult, Report, ReportTemplate

HELD_TASK_STATES = ("claimed", "drafting", "preliminary")


def granted_study_ids(user: Any) -> list[Any]:
    """Studies granted to ``user`` or their groups (reading tasks, referrals, shares), in one query."""
    grants = [
        apps.get_model("archive", model)
        .objects.filter(**{lookup: user, "permission__codename": access.VIEW_STUDY})
        .values_list("content_object_id", flat=True)
        for model, lookup in (("StudyUserObjectPermission", "user"), ("StudyGroupObjectPermission", "group__user"))
    ]
    return list(grants[0].union(grants[1]))


def visible_reports(user: Any) -> QuerySet[Report]:
    """Reports of every study ``user`` may open.

    The same rule as ``visible_studies``, read first into plain lists so the
    lookup walks the report table's (institution, date) index.
    """
    if not access._authenticated(user):
        return Report.objects.none()
    rule = Q(institution_id__in=access.institution_ids(user, CLINICAL_ROLES))
    granted = granted_study_ids(user)
    if granted:
        rule |= Q(study_id__in=granted)
    return Report.objects.filter(rule)


def access_report(user: Any, pk: object) -> Report:
    try:
        key = UUID(str(pk))
    except ValueError:
        raise Http404("No such report") from None
    report = (
        Report.objects.select_related("study__patient", "institution", "author", "reading_task").filter(pk=key).first()
    )
    if report is None or not access.can_view_study(user, report.study):
        raise Http404("No such report")
    return report


def held_task(user: Any, study: Any) -> Any:
    """The reading task on ``study`` that ``user`` holds, if any."""
    from workflow.models import ReadingTask

    return (
        ReadingTask.objects.filter(study=study, claimed_by_id=getattr(user, "pk", None), state__in=HELD_TASK_STATES)
        .order_by("-claimed_at")
        .first()
    )


def may_author(user: Any, study: Any) -> bool:
    """A radiologist of the study's hospital, or the holder of a reading task on it (a pool reader)."""
    if not access.can_view_study(user, study):
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
    from workflow.models import ReadingTask

    ids = access.institution_ids(user, [Role.RADIOLOGIST, Role.INSTITUTION_ADMIN])
    ids |= set(
        ReadingTask.objects.filter(claimed_by_id=getattr(user, "pk", None), state__in=HELD_TASK_STATES).values_list(
            "institution_id", flat=True
        )
    )
    return ids


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
