"""Pages: the coordinators' patient links (consents, suggestions with scores, links) and the clinicians' who-looked."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from archive.models import Patient
from pacs_cloud import audit
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution_as

from . import access, actions
from .models import LinkSuggestion, PatientConsent

LIST_ROWS = 100


@login_required
@require_GET
def patient_links(request: HttpRequest) -> HttpResponse:
    """Consents given here and for us, pending suggestions best first, and the links of our patients."""
    institution = current_institution_as(request, Role.REFERRAL_COORDINATOR)
    consents = PatientConsent.objects.select_related(
        "patient", "granting_institution", "receiving_institution", "recorded_by"
    ).order_by("-recorded_at")
    given = list(consents.filter(granting_institution=institution)[:LIST_ROWS])
    received = list(consents.filter(receiving_institution=institution)[:LIST_ROWS])
    suggestions = list(
        LinkSuggestion.objects.filter(
            institution=institution, state=LinkSuggestion.State.PENDING, consent__revoked_at__isnull=True
        )
        .select_related("patient", "candidate__institution")
        .order_by("-score", "created_at")[:LIST_ROWS]
    )
    links = []
    for link in (
        access.visible_links(request.user)
        .filter(unlinked_at__isnull=True)
        .select_related("patient__institution", "other_patient__institution", "created_by")
        .order_by("-created_at")[:LIST_ROWS]
    ):
        ours, theirs = link.side_of(institution.pk)
        links.append({"link": link, "ours": ours, "theirs": theirs})
    shown = {
        "consents": [str(c.pk) for c in [*given, *received]],
        "suggestions": [str(s.pk) for s in suggestions],
        "links": [str(row["link"].pk) for row in links],
    }
    if any(shown.values()):
        audit.record(
            "workflow.patientlink.list",
            request=request,
            institution=institution,
            object_type="workflow.patientlink",
            detail=shown,
        )
    context = {
        "institution": institution,
        "given": given,
        "received": received,
        "suggestions": suggestions,
        "links": links,
        "others": Institution.objects.filter(is_active=True).exclude(pk=institution.pk).order_by("name"),
        "scopes": PatientConsent.Scope.choices,
        "methods": PatientConsent.Method.choices,
    }
    return render(request, "workflow/patient_links.html", context)


def _expiry(value: str, institution: Institution) -> datetime | None:
    parsed = parse_datetime(value) if value else None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, ZoneInfo(institution.time_zone))
    return parsed


@login_required
@require_POST
def patient_links_act(request: HttpRequest) -> HttpResponse:
    """The form target of Confirm, Reject, Unlink, Revoke and Record consent."""
    what = request.POST.get("action", "")
    user = request.user
    try:
        if what == "confirm":
            link = actions.do_confirm_suggestion(
                access.access_suggestion(user, request.POST.get("pk")), acting_user=user, request=request
            )
            messages.success(request, f"Linked: patient {link.patient.patient_id} ↔ {link.other_patient.patient_id}.")
        elif what == "reject":
            actions.do_reject_suggestion(
                access.access_suggestion(user, request.POST.get("pk")), acting_user=user, request=request
            )
            messages.success(request, "Suggestion rejected: it will not be made again.")
        elif what == "unlink":
            actions.do_unlink_patients(
                access.access_link(user, request.POST.get("pk")),
                acting_user=user,
                reason=request.POST.get("reason", ""),
                request=request,
            )
            messages.success(request, "Unlinked: the other hospital's priors are no longer compared.")
        elif what == "revoke":
            actions.do_revoke_patient_consent(
                access.access_consent(user, request.POST.get("pk")),
                acting_user=user,
                reason=request.POST.get("reason", ""),
                request=request,
            )
            messages.success(request, "Consent revoked: its studies are withdrawn from every reader now.")
        elif what == "consent":
            institution = current_institution_as(request, Role.REFERRAL_COORDINATOR)
            patient = Patient.objects.filter(
                institution=institution, patient_id=request.POST.get("patient_id", "").strip()
            ).first()
            receiver = Institution.objects.filter(pk=_pk(request.POST.get("receiving_institution")), is_active=True)
            if patient is None or not receiver.exists():
                messages.error(request, "No such patient of ours, or no such institution.")
            else:
                actions.do_record_patient_consent(
                    patient,
                    receiving_institution=receiver.get(),
                    acting_user=user,
                    scope=request.POST.get("scope", PatientConsent.Scope.COMPARISON),
                    method=request.POST.get("method", PatientConsent.Method.WRITTEN),
                    note=request.POST.get("note", ""),
                    expires_at=_expiry(request.POST.get("expires_at", ""), institution),
                    request=request,
                )
                messages.success(request, f"Consent of patient {patient.patient_id} recorded.")
        else:
            raise Http404("No such action")
    except actions.LinkRefused as refused:
        messages.error(request, refused.message)
    return redirect("workflow-list-patient-links")


def _pk(value: Any) -> Any:
    from uuid import UUID

    try:
        return UUID(str(value))
    except ValueError:
        return None


@login_required
@require_GET
@audit.records_refusal("workflow.outside_reads_refused", object_type="archive.patient", key="pk")
def outside_reads(request: HttpRequest, pk: Any) -> HttpResponse:
    """Who outside the patient's hospital opened the patient's studies (for the hospital's own clinical staff)."""
    patient = access.access_own_patient(request.user, pk)
    reads = access.outside_reads(patient)
    audit.record(
        "workflow.outside_reads",
        request=request,
        institution=patient.institution_id,
        object_type="archive.patient",
        object_id=patient.pk,
        patient_id=patient.patient_id,
        detail={"reads": len(reads)},
    )
    return render(request, "workflow/outside_reads.html", {"patient": patient, "reads": reads})


@login_required
@require_GET
def outside_reads_search(request: HttpRequest) -> HttpResponse:
    """Find a patient of the current institution by patient ID, to see who elsewhere looked."""
    institution = current_institution_as(request, Role.CLINICIAN, Role.RADIOLOGIST, Role.REFERRAL_COORDINATOR)
    query = request.GET.get("patient_id", "").strip()[:64]
    patients = list(Patient.objects.filter(institution=institution, patient_id=query)[:20]) if query else []
    if patients:
        audit.record(
            "workflow.outside_reads.search",
            request=request,
            institution=institution,
            object_type="archive.patient",
            patient_id=query,
            detail={"patients": [str(p.pk) for p in patients]},
        )
    return render(request, "workflow/outside_reads_search.html", {"query": query, "patients": patients})
