"""The viewer's panel on the home page: the studies this user opened lately, one click from the viewer."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from archive.access import visible_studies
from pacs_cloud import audit
from pacs_cloud.home import Panel
from pacs_cloud.models import AuditEvent, Institution

RECENT_ROWS = 10
# Audit events looked through for the latest openings (several per study are common).
SCAN_EVENTS = 500


def recent_panel(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """ "Opened recently": the last studies the user opened, still visible to them, newest first.

    Read from the audit trail (every opening is recorded there once per
    window) and filtered through the access policy, so a study whose grant
    ended drops off the list.
    """
    user = request.user
    opened = (
        AuditEvent.objects.filter(actor_id=user.pk, action="study.view", object_type="study")
        .order_by("-id")
        .values_list("object_id", flat=True)[:SCAN_EVENTS]
    )
    order: list[str] = []
    for study_id in opened:
        if study_id not in order:
            order.append(study_id)
        if len(order) >= RECENT_ROWS:
            break
    if not order:
        return []
    studies = {
        str(s.pk): s for s in visible_studies(user).filter(pk__in=order).select_related("patient", "institution")
    }
    rows = [studies[pk] for pk in order if pk in studies]
    if not rows:
        return []
    audit.record(
        "study.list",
        request=request,
        institution=institution,
        object_type="study",
        detail={"panel": "viewer.recent", "study_ids": [str(s.pk) for s in rows]},
    )
    context: dict[str, Any] = {"studies": rows, "current": institution}
    return [Panel("Opened recently", "viewer/home/recent.html", context, order=450)]
