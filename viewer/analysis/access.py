"""Lookups of DCE-MRI analysis: a job or region is visible exactly when its study is (404 alike otherwise)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404

from archive.access import visible_studies

from .models import DceMapJob, DceRegionAnalysis


def access_map_job(user: Any, job_id: object) -> DceMapJob:
    try:
        key = UUID(str(job_id))
    except ValueError:
        raise Http404("No such job") from None
    job = DceMapJob.objects.filter(pk=key, study__in=visible_studies(user)).select_related("study__patient").first()
    if job is None:
        raise Http404("No such job")
    return job


def access_region(user: Any, region_id: object) -> DceRegionAnalysis:
    try:
        key = UUID(str(region_id))
    except ValueError:
        raise Http404("No such region") from None
    region = (
        DceRegionAnalysis.objects.filter(pk=key, study__in=visible_studies(user))
        .select_related("study__patient", "study__institution")
        .first()
    )
    if region is None:
        raise Http404("No such region")
    return region
