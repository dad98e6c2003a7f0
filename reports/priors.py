"""``/api/v1/studies/{id}/priors/``: a study's relevant priors the caller may see, with their signed reports.

The priors are chosen by ``archive.priors``; the caller sees those the access
rule lets them open (all of them at the patient's hospital, the ones granted
with a reading task elsewhere). The signed reports are the readers' view:
drafts never appear.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.access import access_study, searchable_studies
from archive.models import Study
from archive.priors.selection import select_priors
from pacs_cloud import audit
from pacs_cloud.access import HasClinicalRole
from workflow.links.access import comparable_patients

from .models import Report, ReportVersion

SIGNED_STATES = (Report.State.FINAL, Report.State.AMENDED)


def signed_reports(study_ids: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    """Each study's signed reports (newest version's content), two queries for all of them."""
    reports = list(Report.objects.filter(study_id__in=study_ids, state__in=SIGNED_STATES).order_by("-signed_at"))
    newest: dict[Any, ReportVersion] = {}
    for version in ReportVersion.objects.filter(report__in=reports).only(
        "report_id", "number", "kind", "content", "signer_name", "signed_at"
    ):
        if version.report_id not in newest or version.number > newest[version.report_id].number:
            newest[version.report_id] = version
    out: dict[Any, list[dict[str, Any]]] = {}
    for report in reports:
        latest = newest.get(report.pk)
        content = latest.content if latest else {}
        out.setdefault(report.study_id, []).append(
            {
                "id": str(report.pk),
                "state": report.state,
                "signed_at": report.signed_at.isoformat() if report.signed_at else None,
                "signer": latest.signer_name if latest else "",
                "version": latest.number if latest else None,
                "findings": content.get("findings", ""),
                "impression": content.get("impression", ""),
                "url": f"/reports/{report.pk}/",
            }
        )
    return out


def prior_json(study: Study, reports: list[dict[str, Any]], *, linked: bool = False) -> dict[str, Any]:
    """One prior as the API shows it; ``linked``: a study of the same person at another hospital."""
    return {
        "id": str(study.pk),
        "study_instance_uid": study.study_instance_uid,
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "description": study.description,
        "modalities": study.image_modalities,
        "accession_number": study.accession_number,
        "hospital": study.institution.name,
        "linked": linked,
        "viewer_url": f"/viewer/studies/{study.pk}/",
        "reports": reports,
    }


def visible_priors(user: Any, study: Study) -> list[Study]:
    """The relevant priors of ``study`` that ``user`` may open, newest first."""
    priors = select_priors(study, linked_patients=comparable_patients(study))
    if not priors:
        return []
    visible = set(searchable_studies(user).filter(pk__in=[p.pk for p in priors]).values_list("pk", flat=True))
    return [p for p in priors if p.pk in visible]


_REPORT_FIELDS = {
    "id": serializers.UUIDField(),
    "state": serializers.CharField(),
    "signed_at": serializers.DateTimeField(allow_null=True),
    "signer": serializers.CharField(),
    "version": serializers.IntegerField(allow_null=True),
    "findings": serializers.CharField(),
    "impression": serializers.CharField(),
    "url": serializers.CharField(),
}
_PRIOR_FIELDS = {
    "id": serializers.UUIDField(),
    "study_instance_uid": serializers.CharField(),
    "study_date": serializers.DateField(allow_null=True),
    "description": serializers.CharField(),
    "modalities": serializers.ListField(child=serializers.CharField()),
    "accession_number": serializers.CharField(),
    "hospital": serializers.CharField(help_text="The hospital whose study it is."),
    "linked": serializers.BooleanField(
        help_text="A study of the same person at another hospital (a patient link with the patient's consent)."
    ),
    "viewer_url": serializers.CharField(),
    "reports": inline_serializer("PriorReport", _REPORT_FIELDS, many=True),
}


class StudyPriorsView(APIView):
    """The relevant priors of a study the caller may read, newest first, each with its signed reports."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        responses={
            200: inline_serializer(
                "StudyPriors",
                {"study": serializers.UUIDField(), "priors": inline_serializer("PriorStudy", _PRIOR_FIELDS, many=True)},
            )
        },
        tags=["studies"],
        operation_id="studies_priors",
    )
    @audit.records_refusal("archive.study.priors_refused", object_type="archive.study", key="pk")
    def get(self, request: Request, pk: str) -> Response:
        study = access_study(request.user, pk=pk)
        priors = visible_priors(request.user, study)
        reports = signed_reports([p.pk for p in priors])
        audit.record(
            "archive.study.priors",
            request=request._request,
            institution=study.institution_id,
            object_type="archive.study",
            object_id=study.pk,
            patient_id=study.patient.patient_id,
            detail={"priors": [str(p.pk) for p in priors]},
        )
        return Response(
            {
                "study": str(study.pk),
                "priors": [
                    prior_json(p, reports.get(p.pk, []), linked=p.institution_id != study.institution_id)
                    for p in priors
                ],
            }
        )
