"""The onboarding checklist page of an institution's administrator."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from archive import actions as archive_actions
from archive.edge import enrolment
from archive.models import DicomNode
from pacs_cloud import actions as platform_actions
from pacs_cloud.forms import InviteForm
from pacs_cloud.home import Panel
from pacs_cloud.models import Institution, Invitation, Role, User
from pacs_cloud.tenancy import current_institution_as
from pacs_cloud.views import invitation_link
from worklist import actions as worklist_actions

from ..policy import PolicyError
from . import checklist
from .actions import do_start_routing_from_template

MAX_CSV_BYTES = 2 * 1024 * 1024


def cloud_url(request: HttpRequest) -> str:
    """This server's address as the hospital's edge reaches it (the address the admin's browser used)."""
    return request.build_absolute_uri("/").rstrip("/")


def _page(request: HttpRequest, institution: Institution, *, status: int = 200, **extra: Any) -> HttpResponse:
    context = {
        "institution": institution,
        "status": checklist.status(institution),
        "nodes": DicomNode.objects.filter(institution=institution).order_by("ae_title"),
        "invitations": Invitation.objects.filter(institution=institution).order_by("-created_at")[:20],
        "invite_form": extra.pop("invite_form", None) or InviteForm(initial={"roles": [Role.TECHNOLOGIST]}),
        "templates": checklist.ROUTING_TEMPLATES.values(),
        "pools": checklist.agreed_pools(institution),
        "edges": [(edge, checklist.is_connected(edge)) for edge in checklist.edges(institution)],
        "status_url": reverse("workflow-onboarding-status", kwargs={"institution_id": institution.pk}),
        **extra,
    }
    response = render(request, "workflow/onboarding/checklist.html", context, status=status)
    response["Cache-Control"] = "no-store"  # it may hold an edge token or an invitation link
    return response


@login_required
@require_http_methods(["GET", "POST"])
def onboarding(request: HttpRequest) -> HttpResponse:
    """The checklist; each form posts its ``step`` here and runs that step's action."""
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    if request.method == "GET":
        return _page(request, institution)
    step = STEPS.get(request.POST.get("step", ""))
    if step is None:
        messages.error(request, "Unknown step.")
        return redirect("workflow-show-onboarding")
    return step(request, institution)


def _back(anchor: str) -> HttpResponse:
    return redirect(f"{reverse('workflow-show-onboarding')}#step-{anchor}")


def _add_node(request: HttpRequest, institution: Institution) -> HttpResponse:
    port = request.POST.get("port", "").strip()
    try:
        node = archive_actions.do_save_dicom_node(
            institution=institution,
            acting_user=request.user,
            ae_title=request.POST.get("ae_title", ""),
            host=request.POST.get("host", ""),
            port=int(port) if port.isdigit() else None,
            description=request.POST.get("description", ""),
        )
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    else:
        messages.success(request, f"{node.ae_title} added.")
    return _back("modalities")


def _echo(request: HttpRequest, institution: Institution) -> HttpResponse:
    key = _uuid(request.POST.get("node"))
    node = DicomNode.objects.filter(institution=institution, pk=key).first() if key else None
    if node is None:
        messages.error(request, "No such DICOM node.")
    else:
        result = archive_actions.do_echo_dicom_node(node, acting_user=request.user, request=request)
        (messages.success if result.ok else messages.error)(request, f"C-ECHO {node.ae_title}: {result.message}")
    return _back("modalities")


def _import_procedures(request: HttpRequest, institution: Institution) -> HttpResponse:
    upload = request.FILES.get("file")
    if upload is None or (upload.size or 0) > MAX_CSV_BYTES:
        messages.error(request, "Choose a CSV file of at most 2 MB.")
        return _back("procedures")
    result = worklist_actions.do_import_procedures(
        institution, upload.read(), acting_user=request.user, request=request
    )
    if result.errors:
        return _page(request, institution, status=400, import_errors=result.errors)
    messages.success(
        request, f"Catalogue imported ({result.encoding}): {len(result.created)} new, {len(result.updated)} updated."
    )
    return _back("procedures")


def _invite(request: HttpRequest, institution: Institution) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _page(request, institution, status=400, invite_form=form)
    acting: User = request.user  # type: ignore[assignment]
    invitation, token = platform_actions.do_invite(
        institution,
        roles=form.cleaned_data["roles"],
        email=form.cleaned_data["email"],
        display_name=form.cleaned_data["display_name"],
        acting_user=acting,
        request=request,
    )
    return _page(request, institution, new_invitation=invitation, link=invitation_link(request, token))


def _routing(request: HttpRequest, institution: Institution) -> HttpResponse:
    try:
        row = do_start_routing_from_template(
            institution,
            request.POST.get("template", ""),
            pool_id=request.POST.get("pool"),
            acting_user=request.user,
            request=request,
        )
    except PolicyError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Routing policy version {row.version}: {row.name}.")
    return _back("routing")


def _enrol_edge(request: HttpRequest, institution: Institution) -> HttpResponse:
    try:
        edge, token = enrolment.do_enrol_edge(
            institution, name=request.POST.get("name", ""), acting_user=request.user, request=request
        )
    except enrolment.EnrolmentError as exc:
        messages.error(request, str(exc))
        return _back("edge")
    command = checklist.edge_command(cloud_url(request), token)
    return _page(request, institution, new_edge=edge, edge_command=command)


STEPS: dict[str, Callable[[HttpRequest, Institution], HttpResponse]] = {
    "node": _add_node,
    "echo": _echo,
    "procedures": _import_procedures,
    "invite": _invite,
    "routing": _routing,
    "edge": _enrol_edge,
}


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """The administrator's set-up progress on the home page, until every step is done."""
    if institution is None or Role.INSTITUTION_ADMIN not in roles:
        return []
    found = checklist.status(institution)
    if found.complete:
        return []
    return [
        Panel(
            "Set up",
            "workflow/onboarding/home_panel.html",
            {"status": found},
            order=40,
            role=Role.INSTITUTION_ADMIN.label,
        )
    ]
