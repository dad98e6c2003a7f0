"""Cloud side: the institution admins' pages of edge gateways (enrol, token, health, quarantine)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from pacs_cloud import access
from pacs_cloud.home import Panel
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution

from ..models import EdgeGateway
from . import enrolment


def _admin_institution(request: HttpRequest) -> Institution:
    institution = current_institution(request)
    if institution is None or not access.has_role(request.user, institution, Role.INSTITUTION_ADMIN):
        raise Http404("This page needs another role at your current institution.")
    return institution


def _page(request: HttpRequest, institution: Institution, **extra: Any) -> HttpResponse:
    edges = list(EdgeGateway.objects.filter(institution=institution).order_by("name"))
    rows = [(edge, enrolment.health(edge)) for edge in edges]
    context = {
        "institution": institution,
        "rows": rows,
        "alerts": sum(1 for _, h in rows if h["alert"]),
        "alert_minutes": settings.EDGE_BACKLOG_ALERT_MINUTES,
        **extra,
    }
    return render(request, "archive/edges.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def edges(request: HttpRequest) -> HttpResponse:
    """Every edge of the institution with its health; enrolling one shows its token once."""
    institution = _admin_institution(request)
    if request.method == "POST":
        try:
            edge, key = enrolment.do_enrol_edge(
                institution, name=request.POST.get("name", ""), acting_user=request.user, request=request
            )
        except enrolment.EnrolmentError as exc:
            messages.error(request, str(exc))
            return redirect("archive-list-edges")
        return _page(request, institution, new_token=key, token_edge=edge)
    return _page(request, institution)


@login_required
@require_http_methods(["GET", "POST"])
def edge_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    institution = _admin_institution(request)
    edge = EdgeGateway.objects.filter(pk=pk, institution=institution).first()
    if edge is None:
        raise Http404("No such edge gateway")
    new_token = None
    if request.method == "POST":
        what = request.POST.get("action")
        try:
            if what == "rotate":
                new_token = enrolment.do_rotate_edge_token(edge, acting_user=request.user, request=request)
            elif what == "revoke":
                enrolment.do_revoke_edge(edge, acting_user=request.user, request=request)
                messages.success(request, f"{edge.name} is revoked: its token no longer works.")
                return redirect("archive-edit-edge", pk=edge.pk)
        except enrolment.EnrolmentError as exc:
            messages.error(request, str(exc))
        edge.refresh_from_db()
    context = {
        "institution": institution,
        "edge": edge,
        "health": enrolment.health(edge),
        "quarantine": edge.quarantine.all()[:200],
        "new_token": new_token,
        "cloud_url": settings.CLOUD_URL,
    }
    return render(request, "archive/edge.html", context)


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """The institution administrator's panel on the home page: each edge's state, alerts first."""
    if institution is None or Role.INSTITUTION_ADMIN not in roles:
        return []
    edges = list(EdgeGateway.objects.filter(institution=institution, revoked_at__isnull=True).order_by("name"))
    if not edges:
        return []
    rows = sorted(((edge, enrolment.health(edge)) for edge in edges), key=lambda pair: not pair[1]["alert"])
    context = {"rows": rows, "alerts": sum(1 for _, h in rows if h["alert"])}
    return [Panel("Edge gateways", "archive/edges_panel.html", context, order=60, role=Role.INSTITUTION_ADMIN.label)]
