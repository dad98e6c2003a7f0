"""Who may open 3D on a series: whoever may see its study, through the archive's door."""

from __future__ import annotations

from typing import Any

from archive.models import Patient, Series
from pacs_cloud import audit

from ..access import access_series


def access_volume_series(user: Any, series_id: object) -> Series:
    """The series, when ``user`` may see its study; ``Http404`` alike for missing and not-yours."""
    return access_series(user, series_id)


def record_session_start(user: Any, series: Series, session_id: str, *, address: str = "") -> None:
    """Audit that ``user`` opened a 3D render session on ``series`` (every session, not once per window)."""
    study = series.study
    audit.record(
        "viewer.volume.open",
        actor=user,
        object_type="study",
        object_id=study.pk,
        patient_id=Patient.objects.filter(pk=study.patient_id).values_list("patient_id", flat=True).first() or "",
        institution=study.institution_id,
        address=address,
        detail={
            "series": str(series.pk),
            "series_instance_uid": series.series_instance_uid,
            # Enough to tell sessions apart in the trail; never the whole id a viewer holds.
            "session": session_id[:8],
        },
    )


def record_session_refused(user: Any, series_id: object, *, address: str = "") -> None:
    audit.record(
        "viewer.volume.open_refused",
        actor=user if getattr(user, "is_authenticated", False) else None,
        object_type="series",
        object_id=str(series_id),
        outcome=audit.AuditEvent.Outcome.DENIED,
        address=address,
    )
