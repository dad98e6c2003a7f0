"""Pages of referrals and second-opinion shares.

The coordinators' referral inbox and outbox, a new referral, a referral's
detail and timeline; the shares of our studies and those with us, a new
share. Every change goes through ``workflow.referrals.actions``, exactly as
the REST API does; a referral page re-draws itself when a push about one of
its referrals arrives (``referrals.js``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_POST

from archive.access import access_study, visible_studies
from archive.models import Patient, Study
from archive.query import patient_name_q
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.lib.local_time import format_local, offset_label, zone
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution

from . import access, actions
from .models import REFERRAL_OPEN_STATES, ImportedStudy, Referral, StudyShare

LIST_ROWS = 100
STUDY_CHOICES = 50


# Referrals --------------------------------------------------------------------------------


def _coordinating(request: HttpRequest) -> Institution | None:
    """The current institution, if the user coordinates referrals there."""
    institution = current_institution(request)
    if institution and core_access.has_role(request.user, institution, Role.REFERRAL_COORDINATOR):
        return institution
    return None


@login_required
def referral_list(request: HttpRequest) -> HttpResponse:
    box = request.GET.get("box") or "inbox"
    if box not in ("inbox", "outbox"):
        box = "inbox"
    mine = core_access.institution_ids(request.user, access.REFERRAL_ROLES)
    qs = access.visible_referrals(request.user)
    qs = qs.filter(to_institution_id__in=mine) if box == "inbox" else qs.filter(from_institution_id__in=mine)
    if request.GET.get("open") != "0":
        qs = qs.filter(state__in=REFERRAL_OPEN_STATES)
    rows = list(qs.select_related("patient", "from_institution", "to_institution").order_by("-updated_at")[:LIST_ROWS])
    shown = [(r, access.shows_patient(request.user, r, mine)) for r in rows]
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
    qs = visible_studies(request.user).filter(institution=institution).select_related("patient")
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
        studies = [access_study(request.user, pk=pk) for pk in ids]
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
                referral = actions.do_create_referral(
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
            except actions.ReferralRefused as refused:
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
    referral = access.access_referral(request.user, pk)
    sees_patient = access.shows_patient(request.user, referral)
    audit.record(
        "workflow.referral.view",
        request=request,
        institution=access.acting_institution(request.user, referral),
        object_type="workflow.referral",
        object_id=referral.pk,
        patient_id=referral.patient.patient_id if sees_patient else "",
    )
    allowed = access.allowed_actions(request.user, referral)
    attached = list(referral.attachments.select_related("study__institution"))
    visible = set(
        visible_studies(request.user).filter(pk__in=[row.study_id for row in attached]).values_list("pk", flat=True)
    )
    shared = access.shared_study_ids(referral)
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
            "viewer_url": access.viewer_url(row.study_id) if row.study_id in visible else None,
            "imported": imports.get(row.study_id),
        }
        for row in attached
    ]
    attachable = []
    if "attach" in allowed:
        taken = {row.study_id for row in attached}
        attachable = [
            s for s in access.attachable_studies(request.user, referral).order_by("-study_date") if s.pk not in taken
        ]
    candidates = []
    if "import" in allowed:
        candidates = patient_candidates(referral.to_institution, referral.patient)
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
            "timeline": access.timeline(referral),
            "consent_methods": Referral.ConsentMethod.choices,
            "can_write": access.acting_institution(request.user, referral)
            in core_access.institution_ids(request.user, access.REFERRAL_ROLES),
            "side": "sender" if access.is_sender(request.user, referral) else "receiver",
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
    referral = access.access_referral(request.user, pk)
    form = request.POST
    what = form.get("action", "")
    reason = form.get("reason", "")
    user = request.user
    done = "Done."
    try:
        if what == "send":
            actions.do_send_referral(referral, acting_user=user, reason=reason, request=request)
            done = f"Sent to {referral.to_institution.name}; the attached studies are shared with it."
        elif what == "accept":
            actions.do_accept_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Accepted."
        elif what == "decline":
            actions.do_decline_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Declined; the studies are no longer shared with you."
        elif what == "admit":
            actions.do_admit_referral(referral, acting_user=user, reason=reason, request=request)
            done = "The patient is in your care."
        elif what == "return":
            actions.do_return_referral(
                referral,
                acting_user=user,
                discharge_summary=form.get("discharge_summary", ""),
                follow_up_plan=form.get("follow_up_plan", ""),
                reason=reason,
                request=request,
            )
            done = f"Returned to {referral.from_institution.name}."
        elif what == "close":
            actions.do_close_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Closed; the studies are no longer shared."
        elif what == "cancel":
            actions.do_cancel_referral(referral, acting_user=user, reason=reason, request=request)
            done = "Cancelled."
        elif what == "consent":
            actions.do_record_consent(
                referral, acting_user=user, method=form.get("method", ""), note=form.get("note", ""), request=request
            )
            done = "Consent recorded."
        elif what == "attach":
            study = access_study(user, pk=form.get("study") or "")
            actions.do_attach_study(referral, study, acting_user=user, request=request)
            done = "Study attached."
        elif what == "detach":
            actions.do_detach_study(referral, _study_of(referral, form.get("study")), acting_user=user, request=request)
            done = "Study detached."
        elif what == "message":
            actions.do_post_message(referral, acting_user=user, body=form.get("body", ""), request=request)
            done = "Message sent."
        elif what == "import":
            done = _import(request, referral)
        else:
            messages.error(request, "Unknown action.")
            return redirect("workflow-view-referral", pk=referral.pk)
    except actions.ReferralRefused as refused:
        messages.error(request, refused.message)
    except actions.ImportRefused as refused:
        messages.error(request, refused.message)
    except DjangoValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, done)
    return redirect("workflow-view-referral", pk=referral.pk)


def _import(request: HttpRequest, referral: Referral) -> str:
    if "import" not in access.allowed_actions(request.user, referral):
        raise actions.ReferralRefused("Import once the referral is accepted, as its receiving coordinator.")
    study = _study_of(referral, request.POST.get("study"))
    choice = request.POST.get("patient") or ""
    birth = parse_date(request.POST.get("birth_date") or "") if request.POST.get("birth_date") else None
    patient = actions.do_resolve_local_patient(
        referral.to_institution,
        study.patient,
        acting_user=request.user,
        pk=choice if choice and choice != "new" else None,
        patient_id=request.POST.get("patient_id", "") if choice == "new" else "",
        birth_date=birth,
        request=request,
    )
    imported = actions.do_import_shared_study(study, patient=patient, acting_user=request.user, request=request)
    return f"Imported into your archive under patient {imported.patient.patient_id}."


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Any]:
    """The coordinator's home panel: open referrals received and sent, the overdue first."""
    from pacs_cloud.home import Panel

    if institution is None or Role.REFERRAL_COORDINATOR not in roles:
        return []
    base = Referral.objects.select_related("patient", "from_institution", "to_institution")
    inbox = base.filter(to_institution=institution, state__in=REFERRAL_OPEN_STATES).exclude(state=Referral.State.DRAFT)
    outbox = base.filter(from_institution=institution, state__in=REFERRAL_OPEN_STATES)
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


def patient_candidates(institution: Institution, source: Patient, *, limit: int = 10) -> list[Patient]:
    """The receiver's patients who may be the shared study's patient: same name and birth date
    first, then anyone whose name matches."""
    from worklist.actions import find_patients, likely_duplicates

    found = likely_duplicates(institution, source.name, source.birth_date)
    family = source.name.split("=")[0].split("^")[0].strip()
    if family:
        found += [p for p in find_patients(institution, family, limit=limit) if p not in found]
    return found[:limit]


# Second-opinion shares ---------------------------------------------------------------


def _sharing(request: HttpRequest) -> Institution | None:
    """The current institution, if the user shares and receives studies there (coordinator or radiologist)."""
    institution = current_institution(request)
    if institution and core_access.has_role(request.user, institution, *access.SHARE_OWNER_ROLES):
        return institution
    return None


def parse_expiry(value: str, time_zone: str) -> datetime | None:
    """A ``datetime-local`` (or ISO 8601) value; one without an offset is a wall-clock time in ``time_zone``.

    The form shows and takes times in the sharing institution's zone, as every
    page does; the share stores the instant (UTC).
    """
    try:
        parsed = parse_datetime((value or "").strip())
    except ValueError:  # well-formed but impossible, such as 2026-02-30T10:00
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, zone(time_zone))
    return parsed


@login_required
def share_list(request: HttpRequest) -> HttpResponse:
    institution = _sharing(request)
    if institution is None:
        raise Http404("Shares are kept by the institution's referral coordinators and radiologists")
    mine = access.visible_shares(request.user).filter(kind=StudyShare.Kind.SECOND_OPINION)
    show_ended = request.GET.get("ended") == "1"
    outgoing_qs = mine.filter(study__institution=institution)
    if not show_ended:
        outgoing_qs = outgoing_qs.filter(revoked_at__isnull=True)
    outgoing = list(outgoing_qs.order_by("-granted_at")[:LIST_ROWS])
    incoming = list(
        mine.filter(institution=institution, revoked_at__isnull=True)
        .exclude(study__institution=institution)
        .order_by("-granted_at")[:LIST_ROWS]
    )
    imports = {
        i.source_study_id: i
        for i in ImportedStudy.objects.filter(
            source_study_id__in=[s.study_id for s in incoming], institution=institution
        ).select_related("patient")
    }
    incoming_rows = []
    for share in incoming:
        importable = access.can_import_share(request.user, share) and share.study_id not in imports
        incoming_rows.append(
            {
                "share": share,
                "viewer_url": access.viewer_url(share.study_id),
                "imported": imports.get(share.study_id),
                "can_import": importable,
                "candidates": patient_candidates(institution, share.study.patient) if importable else [],
            }
        )
    shown = [*outgoing, *incoming]
    if shown:
        audit.record(
            "workflow.share.list",
            request=request,
            institution=institution,
            object_type="workflow.studyshare",
            detail={"shares": [str(s.pk) for s in shown], "study_ids": sorted({str(s.study_id) for s in shown})},
        )
    return render(
        request,
        "workflow/shares.html",
        {
            "institution": institution,
            "outgoing": [(s, access.can_revoke_share(request.user, s) and s.revoked_at is None) for s in outgoing],
            "incoming": incoming_rows,
            "show_ended": show_ended,
            "now": timezone.now(),
        },
    )


@login_required
def share_new(request: HttpRequest) -> HttpResponse:
    institution = _sharing(request)
    if institution is None:
        raise Http404("Studies are shared by the institution's referral coordinators and radiologists")
    targets = Institution.objects.filter(is_active=True, kind=Institution.Kind.HOSPITAL).exclude(pk=institution.pk)
    if request.method == "POST":
        form = request.POST
        problems = []
        study = None
        try:
            study = access_study(request.user, pk=UUID(form.get("study") or ""))
        except ValueError:
            problems.append("Choose the study to share.")
        if study is not None and study.institution_id != institution.pk:
            problems.append("Choose a study of your own institution.")
        to = None
        try:
            to = targets.filter(pk=UUID(form.get("institution") or "")).first()
        except ValueError:
            pass
        if to is None:
            problems.append("Choose the hospital to ask for a second opinion.")
        expires_at = parse_expiry(form.get("expires_at", ""), institution.time_zone)
        if expires_at is None:
            problems.append("Give the date and time when the share ends.")
        if not problems and study is not None and to is not None:
            try:
                share = actions.do_share_for_second_opinion(
                    study,
                    to,
                    acting_user=request.user,
                    reason=form.get("reason", ""),
                    expires_at=expires_at,
                    request=request,
                )
            except actions.ShareRefused as refused:
                problems.append(refused.message)
            else:
                messages.success(
                    request,
                    f"Shared with {to.name} until {format_local(share.expires_at, institution.time_zone)}.",
                )
                return redirect("workflow-list-shares")
        for problem in problems:
            messages.error(request, problem)
    now = timezone.now().astimezone(zone(institution.time_zone))
    return render(
        request,
        "workflow/share_new.html",
        {
            "institution": institution,
            "targets": targets,
            "studies": study_choices(request, institution, panel="share-new"),
            "query": request.GET.get("q", ""),
            "form": request.POST if request.method == "POST" else {},
            "min_expiry": now.strftime("%Y-%m-%dT%H:%M"),
            "expiry_zone": offset_label(now),
        },
    )


@require_POST
@login_required
def share_act(request: HttpRequest, pk: UUID) -> HttpResponse:
    """The form target of a share's Revoke (its owner) and Import (its receiver) buttons."""
    share = access.visible_shares(request.user).filter(pk=pk, kind=StudyShare.Kind.SECOND_OPINION).first()
    if share is None:
        raise Http404("No such share")
    what = request.POST.get("action", "")
    if what == "revoke":
        if not access.can_revoke_share(request.user, share):
            messages.error(request, access.REVOKE_REFUSED)
        elif actions.do_end_second_opinion(
            share, acting_user=request.user, reason=request.POST.get("reason", ""), request=request
        ):
            messages.success(request, f"Revoked: {share.institution.name} can no longer see the study.")
        else:
            messages.info(request, "That share had already ended.")
    elif what == "import":
        if not access.can_import_share(request.user, share):
            messages.error(request, "Only the institution it is shared with imports it.")
        else:
            choice = request.POST.get("patient") or ""
            birth = request.POST.get("birth_date") or ""
            try:
                imported = actions.do_import_share(
                    share,
                    acting_user=request.user,
                    pk=choice if choice and choice != "new" else None,
                    patient_id=request.POST.get("patient_id", "") if choice == "new" else "",
                    birth_date=parse_date(birth) if birth else None,
                    request=request,
                )
            except actions.ImportRefused as refused:
                messages.error(request, refused.message)
            except DjangoValidationError as error:
                messages.error(request, " ".join(error.messages))
            else:
                messages.success(request, f"Imported into your archive under patient {imported.patient.patient_id}.")
    else:
        messages.error(request, "Unknown action.")
    return redirect("workflow-list-shares")
