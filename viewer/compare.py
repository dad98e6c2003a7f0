"""The comparison view: the study being read beside its relevant priors (1×2 or 2×2).

The page is a shell: ``static/viewer/compare.js`` reads the priors from
``/api/v1/studies/{id}/priors/`` and each study's manifest from the viewer
API, so every study it shows passes the access door (and is audited, a prior
as a prior) exactly as when opened alone.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from archive.access import access_study
from pacs_cloud import audit
from workflow.access import held_tasks

from .access import record_study_view

LAYOUTS = ("1x2", "2x2")


@login_required
@audit.records_refusal("study.view_refused", object_type="study", key="study_id")
def compare_study(request: HttpRequest, study_id: str) -> HttpResponse:
    study = access_study(request.user, pk=study_id)
    record_study_view(request, study, via="viewer.compare")
    layout = request.GET.get("layout", "1x2")
    return render(
        request,
        "viewer/compare.html",
        {
            "study": study,
            "patient": study.patient,
            "layout": layout if layout in LAYOUTS else "1x2",
            "manifest_url": reverse("viewer-api-study", args=[study.pk]),
            "priors_url": reverse("reports-list-study-priors", args=[study.pk]),
            "holds_reading_task": held_tasks(request.user).filter(study=study).exists(),
        },
    )
