"""Coordinator pages: the referral inbox and outbox, a new referral, a referral's detail and timeline.

Every change goes through ``workflow.referrals`` (and ``workflow.exchange``
for imports), exactly as the REST API does; a page re-draws itself when a
push about one of its referrals arrives (``referrals.js``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.views.decorators.http import require_POST

from archive.models import Study
from archive.query import patient_name_q
from pacs_cloud import access, audit
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution

from . import exchange, referrals
from .models import REFERRAL_ENDED_STATES, ImportedStudy, Referral
from .referral_api import allowed_actions
from .serializers import viewer_url

LIST_ROWS = 100
STUDY_CHOICES = 50
OPEN_STATES = [s for s in Referral.State.values if s not in REFERRAL_ENDED_STATES]


def _coordinating(request: HttpRequest) -> Institution | None:
    """The current institution, if the user coordinates referrals there."""
    institution = current_institution(request)
    if institution and access.has_role(request.user, institution, Role.REFERRAL_COORDINATOR):
        return institution
    return None


@login_required
def referral_list(request: HttpRequest) -> HttpResponse:
    box = request.GET.get("box") or "inbox"
    if box not in ("inbox", "outbox"):
        box = "inbox"
    mine = access.institution_ids(request.user, referrals.REFERRAL_ROLES)
    qs = referrals.visible_referrals(request.user)
    qs = qs.filter(to_institution_id__in=mine) if box == "inbox" else qs.filter(from_institution_id__in=mine)
    if request.GET.get("open") != "0":
        qs = qs.filter(state__in=OPEN_STATES)
    rows = list(qs.select_related("patient", "from_institution", "to_institution").order_by("-updated_at")[:LIST_ROWS])
    shown = [(r, referrals.shows_patient(request.user, r, mine)) for r in rows]
    if rows:
        audit.record(
            "workflow.referral.list",
            request=request,
            object_type="workflow.referral",
            detail={"referrals": [str(r.pk) for r, sees in shown if sees], "box": box},
        )
    return render(
        request,
        "workflow/referrals.html",
        {
            "rows": shown,
            "box": box,
            "open_only": request.GET.get("open") != "0",
            "can_create": _coordinating(request) is not None,
            "now": timezone.now(),
        },
    )


def study_choices(request: HttpRequest, institution: Institution, *, panel: str = "referral-new") -> list[Study]:
    """The institution's studies the user sees, searched by ``?q=`` (patient ID or name); the list is audited."""
    qs = access.visible_studies(request.user).filter(institution=institution).select_related("patient")
    query = (request.GET.get("q") or "").strip()
    if query:
        qs = qs.filter(patient__patient_id__iexact=query) | qs.filter(patient_name_q(query, prefix="patient__"))
    studies = list(qs.order_by("-received_at")[:STUDY_CHOICES])
    if studies:
        audit.record(
            "study.list",
            request=request,
            institution=institution,
            object_type="study",
            detail={"panel": panel, "study_ids": [str(s.pk) for s in studies]},
        )
    return studies


@login_required
def referral_new(request: HttpRequest) -> HttpResponse:
    institution = _coordinating(request)
    if institution is None:
        raise Http404("Referrals are created by the institution's referral coordinators")
    targets = Institution.objects.filter(is_active=True, kind=Institution.Kind.HOSPITAL).exclude(pk=institution.pk)
    if request.method == "POST":
        form = request.POST
        try:
            ids = [UUID(v) for v in form.getlist("studies")]
        except ValueError:
            ids = []
        studies = [access.access_study(request.user, pk=pk) for pk in ids]
        to = None
        try:
            to = targets.filter(pk=UUID(form.get("to_institution") or "")).first()
        except ValueError:
            pass
        problems = []
        if not studies:
            problems.append("Choose at least one study of the patient.")
        elif len({s.patient_id for s in studies}) > 1 or any(s.institution_id != institution.pk for s in studies):
            problems.append("The chosen studies must all be of one patient of your institution.")
        if to is None:
            problems.append("Choose the hospital to refer to.")
        if not problems and to is not None:
            try:
                referral = referrals.do_create_referral(
                    acting_user=request.user,
                    from_institution=institution,
                    to_institution=to,
                    patient=studies[0].patient,
                    reason=form.get("reason", ""),
                    direction=form.get("direction") or Referral.Direction.UPWARD,
                    urgency=form.get("urgency") or Referral.Urgency.ROUTINE,
                    clinical_summary=form.get("clinical_summary", ""),
                    studies=studies,
                    request=request,
                )
            except referrals.ReferralRefused as refused:
                problems.append(refused.message)
            else:
                messages.success(request, "Draft saved. Record the patient's consent, then send it.")
                return redirect("workflow-view-referral", pk=referral.pk)
        for problem in problems:
            messages.error(request, problem)
    return render(
        request,
        "workflow/referral_new.html",
        {
            "institution": institution,
            "targets": targets,
            "studies": study_choices(request, institution),
            "query": request.GET.get("q", ""),
            "urgencies": Referral.Urgency.choices,
            "directions": Referral.Direction.choices,
            "form": request.POST if request.method == "POST" else {},
        },
    )


@login_required
def referral_detail(request: HttpRequest, pk: UUID) -> HttpResponse:
    referral = referrals.access_referral(request.user, pk)
    sees_patient = referrals.shows_patient(request.user, referral)
    audit.record(
        "workflow.referral.view",
        request=request,
        institution=referrals.acting_institution(request.user, referral),
        object_type="workflow.referral",
        object_id=referral.pk,
        patient_id=referral.patient.patient_id if sees_patient else "",
    )
    allowed = allowed_actions(request.user, referral)
    attached = list(referral.attachments.select_related("study__institution"))
    visible = set(
        access.visible_studies(request.user)
        .filter(pk__in=[row.study_id for row in attached])
        .values_list("pk", flat=True)
    )
    shared = referrals.shared_study_ids(referral)
    imports = {
        i.source_study_id: i
        for i in ImportedStudy.objects.filter(
            source_study_id__in=[row.study_id for row in attached], institution_id=referral.to_institution_id
        ).select_related("patient")
    }
    studies = [
        {
            "study": row.study,
            "visible": row.study_id in visible,
            "shared": row.study_id in shared,
            "viewer_url": viewer_url(row.study_id) if row.study_id in visible else None,
            "imported": imports.get(row.study_id),
        }
        for row in attached
    ]
    attachable = []
    if "attach" in allowed:
        taken = {row.study_id for row in attached}
        attachable = [
            s for s in referrals.attachable_studies(request.user, referral).order_by("-study_date") if s.pk not in taken
        ]
    candidates = []
    if "import" in allowed:
        candidates = exchange.patient_candidates(referral.to_institution, referral.patient)
    return render(
        request,
        "workflow/referral.html",
        {
            "referral": referral,
            "sees_patient": sees_patient,
            "allowed": allowed,
            "studies": studies,
            "attachable": attachable,
            "candidates": candidates,
            "timeline": referrals.timeline(referral),
            "consent_methods": Referral.ConsentMethod.choices,
            "can_write": referrals.acting_institution(request.user, referral)
            in access.institution_ids(request.user, referrals.REFERRAL_ROLES),
            "side": "sender" if referrals.is_sender(request.user, referral) else "receiver",
        },
    )


def _study_of(referral: Referral, value: str | None) -> Study:
    try:
        key = UUID(str(value))
    except ValueError:
        raise Http404("No such study") from None
    row = referral.attachments.filter(study_id=key).select_related("study__patient").first()
    if row is None:
        raise Http404("No such study on this referral")
    return row.study


@require_POST
@login_required
def referral_act(request: HttpRequest, pk: UUID) -> HttpResponse:
    """One form target for every change to a referral (``action`` names it)."""
    referral = referrals.access_referral(request.user, pk)
    form = request.POST
    what = form.get("action", "")
    reason = form.get("reason", "")
    user = request.user
    done = "Done."
    try:
        if what == "send":
            referrals.do_send_referral(referral, acting_user=user, reason=reason, request=request)
            done = f"Sent to {referral.to_institution.name}; the attached studies are shared with it."
        elif what == "accept":
            referrals.do_accept_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Accepted."
        elif what == "decline":
            referrals.do_decline_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Declined; the studies are no longer shared with you."
        elif what == "admit":
            referrals.do_admit_referral(referral, acting_user=user, reason=reason, request=request)
            done = "The patient is in your care."
        elif what == "return":
            referrals.do_return_referral(
                referral,
                acting_user=user,
                discharge_summary=form.get("discharge_summary", ""),
                follow_up_plan=form.get("follow_up_plan", ""),
                reason=reason,
                request=request,
            )
            done = f"Returned to {referral.from_institution.name}."
        elif what == "close":
            referrals.do_close_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Closed; the studies are no longer shared."
        elif what == "cancel":
            referrals.do_cancel_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Cancelled."
        elif what == "consent":
            referrals.do_record_consent(
                referral, acting_user=user, method=form.get("method", ""), note=form.get("note", ""), request=request
            )
            done = "Consent recorded."
        elif what == "attach":
            study = access.access_study(user, pk=form.get("study") or "")
            referrals.do_attach_study(referral, study, acting_user=user, request=request)
            done = "Study attached."
        elif what == "detach":
            referrals.do_detach_study(
                referral, _study_of(referral, form.get("study")), acting_user=user, request=request
            )
            done = "Study detached."
        elif what == "message":
            referrals.do_post_message(referral, acting_user=user, body=form.get("body", ""), request=request)
            done = "Message sent."
        elif what == "import":
            done = _import(request, referral)
        else:
            messages.error(request, "Unknown action.")
            return redirect("workflow-view-referral", pk=referral.pk)
    except referrals.ReferralRefused as refused:
        messages.error(request, refused.message)
    except exchange.ImportRefused as refused:
        messages.error(request, refused.message)
    except DjangoValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, done)
    return redirect("workflow-view-referral", pk=referral.pk)


def _import(request: HttpRequest, referral: Referral) -> str:
    if "import" not in allowed_actions(request.user, referral):
        raise referrals.ReferralRefused("Import once the referral is accepted, as its receiving coordinator.")
    study = _study_of(referral, request.POST.get("study"))
    choice = request.POST.get("patient") or ""
    birth = parse_date(request.POST.get("birth_date") or "") if request.POST.get("birth_date") else None
    patient = exchange.resolve_local_patient(
        referral.to_institution,
        study.patient,
        acting_user=request.user,
        pk=choice if choice and choice != "new" else None,
        patient_id=request.POST.get("patient_id", "") if choice == "new" else "",
        birth_date=birth,
        request=request,
    )
    imported = exchange.do_import_shared_study(study, patient=patient, acting_user=request.user, request=request)
    return f"Imported into your archive under patient {imported.patient.patient_id}."


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Any]:
    """The coordinator's home panel: open referrals received and sent, the overdue first."""
    from pacs_cloud.home import Panel

    if institution is None or Role.REFERRAL_COORDINATOR not in roles:
        return []
    base = Referral.objects.select_related("patient", "from_institution", "to_institution")
    inbox = base.filter(to_institution=institution, state__in=OPEN_STATES).exclude(state=Referral.State.DRAFT)
    outbox = base.filter(from_institution=institution, state__in=OPEN_STATES)
    now = timezone.now()
    waiting = list(inbox.filter(state=Referral.State.SENT).order_by("response_due_at")[:5])
    context = {
        "inbox": inbox.count(),
        "outbox": outbox.count(),
        "waiting": waiting,
        "overdue": inbox.filter(state=Referral.State.SENT, response_due_at__lt=now).count(),
        "recent": list(outbox.order_by("-updated_at")[:5]),
        "now": now,
    }
    shown = [str(r.pk) for r in [*waiting, *context["recent"]]]
    if shown:
        audit.record(
            "workflow.referral.list",
            request=request,
            institution=institution,
            object_type="workflow.referral",
            detail={"referrals": shown, "panel": "home"},
        )
    return [
        Panel("Referrals", "workflow/home/referrals.html", context, order=310, role=Role.REFERRAL_COORDINATOR.label)
    ]
