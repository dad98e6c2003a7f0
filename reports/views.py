"""Report pages: the clinicians' lookup, the report page with its verification badge, the editor.

Every page that shows a report or a list of them writes an audit event.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from rest_framework.exceptions import ValidationError

from archive.access import access_study
from pacs_cloud import audit

from . import actions, signing
from .access import (
    access_critical_result,
    access_report,
    access_template,
    may_author,
    visible_critical_results,
    visible_reports,
)
from .api import search
from .models import Report, ReportVersion

FILTERS = ("patient_id", "patient_name", "accession", "date_from", "date_to", "modality", "status")


@require_GET
def lookup_page(request: HttpRequest) -> HttpResponse:
    """Search reports by patient, accession number, dates, modality and status."""
    if not request.user.is_authenticated:
        # Back here after signing in, without the search: a query names patients.
        return redirect_to_login(request.path)
    params = {k: request.GET.get(k, "").strip() for k in FILTERS}
    error = ""
    rows: list[Report] = []
    more = False
    searched = any(params.values()) or "all" in request.GET
    if searched:
        try:
            rows, more = search(request.user, {**{k: v for k, v in params.items() if v}, **_paging(request)})
        except ValidationError as exc:
            error = "; ".join(f"{k}: {v}" for k, v in dict(exc.detail).items()) if isinstance(exc.detail, dict) else ""
        if rows:
            audit.record(
                "report.list",
                request=request,
                object_type="report",
                detail={"panel": "lookup", "report_ids": [str(r.pk) for r in rows]},
            )
    checked = _check_code(request)
    context = {
        "checked": checked,
        "params": params,
        "rows": rows,
        "more": more,
        "searched": searched,
        "error": error,
        "states": Report.State.values,
    }
    return render(request, "reports/lookup.html", context)


def _check_code(request: HttpRequest) -> dict[str, Any] | None:
    """The version a printed verification code names, checked, if the caller may see its report."""
    code = request.GET.get("code", "").strip().upper()
    if not code:
        return None
    version = (
        ReportVersion.objects.filter(verification_code=code, report__in=visible_reports(request.user))
        .select_related("report__study__patient", "report__institution", "signing_key", "signer")
        .first()
    )
    if version is None:
        return {"found": False}
    previous = version.report.versions.filter(number=version.number - 1).first()
    actions.do_record_view(request, version.report, "verify")
    return {"found": True, "version": version, "result": signing.verify(version, previous=previous)}


def _paging(request: HttpRequest) -> dict[str, str]:
    return {k: request.GET[k] for k in ("limit", "offset") if k in request.GET}


@login_required
@require_GET
@audit.records_refusal("report.view_refused", object_type="report", key="report_id")
def report_page(request: HttpRequest, report_id: str) -> HttpResponse:
    """One report: every signed version, key images, the verification badge, critical results."""
    report = access_report(request.user, report_id)
    actions.do_record_view(request, report)
    versions = list(report.versions.select_related("signing_key", "signer").order_by("number"))
    for v in versions:
        v.report = report  # the form is rebuilt from the loaded report and study
    results = signing.verify_report(report)
    checks = {r.version: r for r in results}
    critical = list(visible_critical_results(request.user).filter(report=report))
    writer = report.author_id == request.user.pk or may_author(request.user, report.study)
    context = {
        "report": report,
        "versions": [(v, checks.get(v.number)) for v in reversed(versions)],
        "latest": versions[-1] if versions else None,
        "valid": bool(results) and all(r.valid for r in results),
        "critical": critical,
        "exports": list(versions[-1].exports.order_by("target")) if versions else [],
        "writer": writer,
        "can_edit": writer and report.state in (Report.State.DRAFT, Report.State.PRELIMINARY),
        "can_add": writer and report.state in (Report.State.FINAL, Report.State.AMENDED),
        "addendum_open": report.draft_kind in (Report.DraftKind.ADDENDUM, Report.DraftKind.AMENDMENT),
    }
    return render(request, "reports/report.html", context)


@login_required
@require_GET
@audit.records_refusal("report.view_refused", object_type="report", key="report_id")
def editor(request: HttpRequest, report_id: str) -> HttpResponse:
    """The editor: template, sections, macros, key images, autosave and the sign dialog (reports/editor.js)."""
    report = access_report(request.user, report_id)
    if not (report.author_id == request.user.pk or may_author(request.user, report.study)):
        raise Http404("No such report")
    actions.do_record_view(request, report, "edit")
    if report.state in (Report.State.FINAL, Report.State.AMENDED) and not report.draft_kind:
        return redirect("reports-view-report", report_id=report.pk)
    templates = actions.templates_for(report.study)
    context = {
        "report": report,
        "templates": templates,
        "template_data": [
            {"id": str(t.pk), "name": t.name, "sections": t.sections, "macros": t.macros} for t in templates
        ],
        "config": {
            "id": str(report.pk),
            "study": str(report.study_id),
            "revision": report.draft_revision,
            "kind": report.draft_kind or "report",
            "state": report.state,
            "draft": report.draft,
            "urls": {
                "draft": reverse("reports-report-draft", args=[report.pk]),
                "sign": reverse("reports-report-sign", args=[report.pk]),
                "page": reverse("reports-view-report", args=[report.pk]),
                "manifest": reverse("viewer-api-study", args=[report.study_id]),
                "key_images": reverse("viewer-list-key-images", args=[report.study_id]),
                "viewer": reverse("viewer-open-study", args=[report.study_id]),
            },
        },
    }
    return render(request, "reports/editor.html", context)


@login_required
@require_POST
def write_report(request: HttpRequest, study_id: str) -> HttpResponse:
    """Open the caller's report on a study (a new draft from the chosen template) and go to the editor."""
    study = access_study(request.user, pk=study_id)
    template = None
    if request.POST.get("template"):
        template = access_template(request.user, request.POST["template"])
    try:
        report, _ = actions.do_create_report(study, acting_user=request.user, template=template, request=request)
    except actions.ReportRefused as exc:
        if exc.status == 403:
            raise Http404("No such study") from None
        messages.error(request, str(exc))
        return redirect("home")
    return redirect("reports-edit-report", report_id=report.pk)


@login_required
@require_POST
def open_addendum(request: HttpRequest, report_id: str) -> HttpResponse:
    report = access_report(request.user, report_id)
    try:
        actions.do_open_addendum(
            report, acting_user=request.user, kind=request.POST.get("kind", "addendum"), request=request
        )
    except actions.ReportRefused as exc:
        if exc.status == 403:
            raise Http404("No such report") from None
        messages.error(request, str(exc))
        return redirect("reports-view-report", report_id=report.pk)
    return redirect("reports-edit-report", report_id=report.pk)


@login_required
@require_POST
def acknowledge(request: HttpRequest, critical_id: str) -> HttpResponse:
    row = access_critical_result(request.user, critical_id)
    actions.do_acknowledge_critical_result(row, acting_user=request.user, request=request)
    messages.success(request, "Critical result acknowledged.")
    target = request.POST.get("next", "")
    if target.startswith("/") and not target.startswith("//"):
        return redirect(target)
    return redirect("reports-view-report", report_id=row.report_id)
