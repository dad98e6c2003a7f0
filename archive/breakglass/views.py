"""Break-glass pages: the request form, the administrators' review list, and the home-page alert."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from pacs_cloud import access
from pacs_cloud.home import Panel
from pacs_cloud.models import AuditEvent, Institution, Role

from .actions import BreakGlassError, do_break_glass, eligible_institutions
from .api import reviewable
from .models import BreakGlassAccess


@login_required
@require_http_methods(["GET", "POST"])
def request_access(request: HttpRequest) -> HttpResponse:
    """A clinician or radiologist asks for emergency access to a study, stating why."""
    if not eligible_institutions(request.user):
        raise Http404("Break-glass access is for clinicians and radiologists.")
    uid = (request.POST.get("study_instance_uid") or request.GET.get("study") or "").strip()
    status = 200
    if request.method == "POST":
        try:
            opened = do_break_glass(request.user, uid, reason=request.POST.get("reason", ""), request=request)
        except BreakGlassError as exc:
            # 404 alike for a missing study and one of a hospital that does not allow it.
            status = 404 if exc.not_found else 400
            messages.error(
                request, "No study you may open in an emergency has that UID." if exc.not_found else str(exc)
            )
        else:
            messages.warning(
                request,
                f"Emergency access until {timezone.localtime(opened.expires_at):%H:%M}. "
                "Your institution's and the study's administrators have been told; every read is audited.",
            )
            return redirect("viewer-open-study", study_id=opened.study_id)
    mine = reviewable(request.user).filter(user_id=request.user.pk or 0).select_related("study", "institution")[:20]
    context = {"study_instance_uid": uid, "mine": mine}
    return render(request, "archive/breakglass/request.html", context, status=status)


def _reads(row: BreakGlassAccess) -> list[AuditEvent]:
    until = row.ended_at or row.expires_at
    return list(
        AuditEvent.objects.filter(
            actor_id=row.user_id,
            object_id=str(row.study_id),
            time__gte=row.started_at,
            time__lte=max(until, row.started_at),
        ).order_by("time")[:200]
    )


@login_required
def review(request: HttpRequest) -> HttpResponse:
    """Every break-glass access touching the administrator's institutions, with the reads made under it."""
    admin_of = access.institution_ids(request.user, [Role.INSTITUTION_ADMIN])
    if not admin_of:
        raise Http404("This page is for institution administrators.")
    found = (
        BreakGlassAccess.objects.filter(Q(institution_id__in=admin_of) | Q(via_institution_id__in=admin_of))
        .select_related("user", "study", "institution", "via_institution")
        .order_by("-started_at")[:200]
    )
    rows = [(row, _reads(row), row.via_institution.name, row.institution.name) for row in found]
    return render(request, "archive/breakglass/review.html", {"rows": rows})


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """Administrators: the break-glass accesses still running at their institution, at the top."""
    if institution is None or Role.INSTITUTION_ADMIN not in roles:
        return []
    active = list(
        BreakGlassAccess.objects.filter(ended_at__isnull=True, expires_at__gt=timezone.now())
        .filter(Q(institution=institution) | Q(via_institution=institution))
        .select_related("user")
    )
    context: dict[str, Any] = {"active": active}
    return [
        Panel(
            "Break-glass access", "archive/breakglass/panel.html", context, order=5, role=Role.INSTITUTION_ADMIN.label
        )
    ]
