"""Lookups for the viewer's resources, built on ``pacs_cloud.access``.

Every function raises ``Http404`` alike for missing and not-yours. DICOM UIDs
appear only where DICOMweb puts them in the path; the viewer's own URLs use
the archive's opaque UUIDs.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.http import Http404, HttpRequest

from archive.models import Instance, Series, Study
from pacs_cloud import audit
from pacs_cloud.access import CLINICAL_ROLES, access_study, institution_ids, visible_instances, visible_series

from .models import KeyImage


def _prefer_own(user: Any, rows: list, institution_of: Any) -> Any:
    """The same UIDs may be archived at two institutions (an imported copy): prefer the caller's own."""
    if not rows:
        raise Http404("Not found")
    if len(rows) == 1:
        return rows[0]
    own = institution_ids(user, CLINICAL_ROLES)
    return sorted(rows, key=lambda row: institution_of(row) not in own)[0]


def access_instance(user: Any, study_uid: str, series_uid: str, sop_uid: str) -> Instance:
    """The instance named by its three UIDs (a DICOMweb path), with series, study and patient."""
    rows = list(
        visible_instances(user)
        .filter(
            sop_instance_uid=sop_uid,
            series__series_instance_uid=series_uid,
            series__study__study_instance_uid=study_uid,
        )
        .select_related("series__study__patient")[:2]
    )
    return _prefer_own(user, rows, lambda i: i.series.study.institution_id)


def access_series_by_uid(user: Any, study_uid: str, series_uid: str) -> Series:
    rows = list(
        visible_series(user)
        .filter(series_instance_uid=series_uid, study__study_instance_uid=study_uid)
        .select_related("study__patient")[:2]
    )
    return _prefer_own(user, rows, lambda s: s.study.institution_id)


def access_study_by_uid(user: Any, study_uid: str) -> Study:
    return access_study(user, uid=study_uid)


def access_series(user: Any, series_id: object) -> Series:
    try:
        key = UUID(str(series_id))
    except ValueError:
        raise Http404("No such series") from None
    series = visible_series(user).filter(pk=key).select_related("study__patient").first()
    if series is None:
        raise Http404("No such series")
    return series


def access_key_image(user: Any, key_image_id: object) -> KeyImage:
    """A key image on a study the caller may see."""
    try:
        key = UUID(str(key_image_id))
    except ValueError:
        raise Http404("No such key image") from None
    from pacs_cloud.access import visible_studies

    row = (
        KeyImage.objects.filter(pk=key, study__in=visible_studies(user))
        .select_related("study", "instance__series", "user")
        .first()
    )
    if row is None:
        raise Http404("No such key image")
    return row


def record_study_view(request: HttpRequest, study: Study, *, via: str) -> bool:
    """Audit that the caller opened ``study``, once per user and study per audit window.

    Scrolling a 500-slice series must not write 500 events, but every new
    opening (another study, or the same one after the window) is recorded.
    Returns whether an event was written.
    """
    user = request.user
    key = f"viewer:opened:{getattr(user, 'pk', '')}:{study.pk}"
    # add() is atomic in every cache backend: two workers cannot both win.
    if not cache.add(key, 1, timeout=settings.VIEWER_AUDIT_WINDOW_SECONDS):
        return False
    audit.record(
        "study.view",
        request=request,
        object_type="study",
        object_id=study.pk,
        patient_id=study.patient.patient_id,
        institution=study.institution_id,
        detail={"via": via, "study_instance_uid": study.study_instance_uid},
    )
    return True
