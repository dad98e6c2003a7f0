"""Lookups for the viewer's resources, built on ``archive.access``.

Every function raises ``Http404`` alike for missing and not-yours. DICOM UIDs
appear only where DICOMweb puts them in the path; the viewer's own URLs use
the archive's opaque UUIDs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.http import Http404, HttpRequest

from archive.access import access_study, can_view_study, seen_as_prior, visible_studies
from archive.copies.lifecycle import note_study_read
from archive.models import Instance, Patient, Series, Study
from pacs_cloud import audit, metering
from pacs_cloud.access import CLINICAL_ROLES, institution_ids
from pacs_cloud.metering.models import Metric

from .models import KeyImage


def _visible(user: Any, rows: list, study_of: Any) -> Any:
    """The first of ``rows`` whose study the caller may see, preferring their own institution's copy."""
    if len(rows) > 1:
        own = institution_ids(user, CLINICAL_ROLES)
        rows = sorted(rows, key=lambda r: study_of(r).institution_id not in own)
    for row in rows:
        if can_view_study(user, study_of(row)):
            return row
    raise Http404("Not found")


# DICOMweb UIDs → archived rows, for a short while: a series scrolled frame by
# frame resolves the same few hundred UIDs again and again. Only the lookup is
# remembered; whether the caller may see the study is decided on every request.
_RESOLVE_SECONDS = 60.0
_RESOLVE_MAX = 20_000
_SERIES_AT_ONCE = 2_000
_resolved: OrderedDict[tuple[str, str, str], tuple[float, list[Instance]]] = OrderedDict()
_resolved_lock = threading.Lock()


def _instances_by_uid(study_uid: str, series_uid: str, sop_uid: str) -> list[Instance]:
    key = (study_uid, series_uid, sop_uid)
    now = time.monotonic()
    with _resolved_lock:
        hit = _resolved.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    # A miss resolves the whole series at once: its other frames are about to be asked for.
    series_rows = list(
        Instance.objects.filter(
            series__series_instance_uid=series_uid, series__study__study_instance_uid=study_uid
        ).select_related("series__study")[:_SERIES_AT_ONCE]
    )
    by_sop: dict[str, list[Instance]] = {}
    for row in series_rows:
        by_sop.setdefault(row.sop_instance_uid, []).append(row)
    rows = by_sop.get(sop_uid)
    if rows is None:  # a very large series: look the one instance up on its own
        rows = list(
            Instance.objects.filter(
                sop_instance_uid=sop_uid,
                series__series_instance_uid=series_uid,
                series__study__study_instance_uid=study_uid,
            ).select_related("series__study")[:4]
        )
        by_sop[sop_uid] = rows
    expires = now + _RESOLVE_SECONDS
    with _resolved_lock:
        for sop, found in by_sop.items():
            if found:  # never remember an absence: the instance may arrive any moment
                _resolved[(study_uid, series_uid, sop)] = (expires, found)
                _resolved.move_to_end((study_uid, series_uid, sop))
        while len(_resolved) > _RESOLVE_MAX:
            _resolved.popitem(last=False)
    return rows


def forget_resolved() -> None:
    with _resolved_lock:
        _resolved.clear()


def access_instance(user: Any, study_uid: str, series_uid: str, sop_uid: str) -> Instance:
    """The instance named by its three UIDs (a DICOMweb path), with its series and study.

    Looked up by UID first and then checked against the access policy: the
    same 404 for missing and not-yours, at a fraction of the cost of
    filtering through ``visible_instances`` on every rendered frame.
    """
    return _visible(user, _instances_by_uid(study_uid, series_uid, sop_uid), lambda i: i.series.study)


def access_series_by_uid(user: Any, study_uid: str, series_uid: str) -> Series:
    rows = list(
        Series.objects.filter(series_instance_uid=series_uid, study__study_instance_uid=study_uid).select_related(
            "study__patient"
        )[:4]
    )
    return _visible(user, rows, lambda s: s.study)


def access_study_by_uid(user: Any, study_uid: str) -> Study:
    return access_study(user, uid=study_uid)


def access_series(user: Any, series_id: object) -> Series:
    try:
        key = UUID(str(series_id))
    except ValueError:
        raise Http404("No such series") from None
    series = Series.objects.filter(pk=key).select_related("study__patient").first()
    if series is None or not can_view_study(user, series.study):
        raise Http404("No such series")
    return series


def access_key_image(user: Any, key_image_id: object) -> KeyImage:
    """A key image on a study the caller may see."""
    try:
        key = UUID(str(key_image_id))
    except ValueError:
        raise Http404("No such key image") from None
    row = (
        KeyImage.objects.filter(pk=key, study__in=visible_studies(user))
        .select_related("study", "instance__series", "user")
        .first()
    )
    if row is None:
        raise Http404("No such key image")
    return row


# key → monotonic time until which this process need not ask the shared cache again
_recorded: dict[str, float] = {}


def _opened_key(request: HttpRequest, study: Study) -> str:
    return f"viewer:opened:{getattr(request.user, 'pk', '')}:{study.pk}"


def already_recorded(request: HttpRequest, study: Study) -> bool:
    """Whether this process knows the caller's opening of ``study`` is audited for this window (no I/O)."""
    return _recorded.get(_opened_key(request, study), 0) > time.monotonic()


def record_study_view(request: HttpRequest, study: Study, *, via: str) -> bool:
    """Audit that the caller opened ``study``, once per user and study per audit window.

    Scrolling a 500-slice series must not write 500 events, but every new
    opening (another study, or the same one after the window) is recorded.
    Returns whether an event was written.
    """
    note_study_read(study.pk)  # the lifecycle's "last read", and a recall if it left the online tier
    key = _opened_key(request, study)
    now = time.monotonic()
    # This process already knows it recorded the opening: skip the shared cache.
    if _recorded.get(key, 0) > now:
        return False
    # add() is atomic in every cache backend: two workers cannot both win.
    added = cache.add(key, 1, timeout=settings.VIEWER_AUDIT_WINDOW_SECONDS)
    if len(_recorded) > 10_000:
        _recorded.clear()
    _recorded[key] = now + settings.VIEWER_AUDIT_WINDOW_SECONDS / 2
    if not added:
        return False
    audit.record(
        "study.view",
        request=request,
        object_type="study",
        object_id=study.pk,
        patient_id=Patient.objects.filter(pk=study.patient_id).values_list("patient_id", flat=True).first() or "",
        institution=study.institution_id,
        detail={"via": via, "study_instance_uid": study.study_instance_uid, **_as_prior(request, study)},
    )
    # A read is an audited opening, metered for the institution whose study it is.
    metering.record_usage(study.institution_id, Metric.READS)
    return True


def _as_prior(request: HttpRequest, study: Study) -> dict[str, bool]:
    """Marks the opening of a study seen only as a prior of one being read (every such opening is audited)."""
    return {"as_prior": True} if seen_as_prior(request.user, study) else {}
