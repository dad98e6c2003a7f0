"""The exit's page: an institution administrator's exports, the platform administrator's offboarding."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from pacs_cloud.models import Role
from pacs_cloud.tenancy import current_institution_as

from . import actions
from .access import access_offboarding, access_own_exit_job, is_platform_admin
from .models import ExitJob


@login_required
def exit_page(request: HttpRequest) -> HttpResponse:
    """Exports of the current institution (its administrator) or of every institution (platform administrator)."""
    if is_platform_admin(request.user):
        jobs = list(ExitJob.objects.all()[:200])
        institution = None
    else:
        institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
        jobs = list(ExitJob.objects.filter(institution_id=institution.pk)[:200])
    context = {"jobs": jobs, "institution": institution, "platform": institution is None}
    return render(request, "reports/exit.html", context)


@login_required
@require_POST
def start_export(request: HttpRequest) -> HttpResponse:
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    destination = request.POST.get("destination", ExitJob.Destination.DOWNLOAD)
    if destination not in ExitJob.Destination.values:
        destination = ExitJob.Destination.DOWNLOAD
    try:
        actions.do_request_export(
            institution,
            acting_user=request.user,
            destination=destination,
            bucket=request.POST.get("bucket", "").strip()[:63],
            prefix=request.POST.get("prefix", "").strip()[:200],
            request=request,
        )
    except actions.ExitRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The export has started; this page shows its progress.")
    return redirect("reports-list-exits")


@login_required
@require_POST
def cancel_export(request: HttpRequest, job_id: str) -> HttpResponse:
    job = access_own_exit_job(request.user, job_id)
    try:
        actions.do_cancel_export(job, acting_user=request.user, request=request)
    except actions.ExitRefused as exc:
        messages.error(request, str(exc))
    return redirect("reports-list-exits")


@login_required
@require_POST
def restart_export(request: HttpRequest, job_id: str) -> HttpResponse:
    job = access_own_exit_job(request.user, job_id)
    try:
        actions.do_restart_export(job, acting_user=request.user, request=request)
    except actions.ExitRefused as exc:
        messages.error(request, str(exc))
    return redirect("reports-list-exits")


@login_required
@require_POST
def offboard(request: HttpRequest, job_id: str) -> HttpResponse:
    """Offboard the export's institution (platform administrator; the short name typed to confirm)."""
    job = access_offboarding(request.user, job_id)
    try:
        actions.do_offboard_institution(
            job, acting_user=request.user, confirm=request.POST.get("confirm", "").strip(), request=request
        )
    except actions.ExitRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{job.institution_name} is offboarded; its certificate of deletion is signed.")
    return redirect("reports-list-exits")
