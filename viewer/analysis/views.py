"""The DCE-MRI analysis page of a study: draw a region, see its curve, start maps, overlay them."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from archive.access import access_study
from pacs_cloud import audit
from viewer.access import record_study_view

from . import series as dynamic


def _frame_url(study_uid: str, frame: dynamic.Frame) -> str:
    instance = frame.instance
    return (
        f"/dicomweb/studies/{study_uid}/series/{instance.series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}/frames/{frame.frame + 1}/rendered"
    )


def _acquisitions(study) -> list[dict]:  # type: ignore[no-untyped-def]
    """The study's dynamic acquisitions with, per phase and slice, the rendered frame to show."""
    found = []
    rows = list(study.series.all().order_by("series_number", "created_at"))
    for group in dynamic.dynamic_series_of(rows):
        try:
            phases, times = dynamic.phases(group)
        except dynamic.NotDynamic:
            continue
        first = group[0]
        found.append(
            {
                "series": [str(s.pk) for s in group],
                "label": f"{first.series_number or ''} {first.description or 'Dynamic series'}".strip()
                + f" — {len(times)} time points",
                "times": [round(float(t), 2) for t in times],
                "frames": [[_frame_url(study.study_instance_uid, f) for f in phase] for phase in phases],
            }
        )
    return found


@login_required
@audit.records_refusal("study.view_refused", object_type="study", key="study_id")
def dce_page(request: HttpRequest, study_id: str) -> HttpResponse:
    study = access_study(request.user, pk=study_id)
    record_study_view(request, study, via="dce-analysis")
    return render(
        request,
        "viewer/dce.html",
        {
            "study": study,
            "patient": study.patient,
            "acquisitions": _acquisitions(study),
            "urls": {
                "regions": reverse("viewer-analyse-dce-region"),
                "jobs": reverse("viewer-start-dce-maps"),
                "viewer": reverse("viewer-open-study", args=[study.pk]),
            },
        },
    )
