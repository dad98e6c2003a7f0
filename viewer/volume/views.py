"""The 3D viewer page of a series; its pictures come over the WebSocket (``consumers``)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from pacs_cloud import audit

from ..access import record_study_view
from .access import access_volume_series


@login_required
@audit.records_refusal("study.view_refused", object_type="series", key="series_id")
def open_volume(request: HttpRequest, series_id: str) -> HttpResponse:
    """3D, oblique and curved MPR of one series (audited as an opening of its study)."""
    series = access_volume_series(request.user, series_id)
    study = series.study
    record_study_view(request, study, via="viewer.3d")
    return render(
        request,
        "viewer/volume.html",
        {
            "series": series,
            "study": study,
            "patient": study.patient,
            "socket_path": f"/ws/viewer/volume/{series.pk}/",
            "study_url": reverse("viewer-open-study", args=[study.pk]),
        },
    )
