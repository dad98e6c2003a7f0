"""Second-opinion share pages: the shares of our studies and those with us, a new share.

Every change goes through the same functions as ``/api/v1/study-shares/``
(``referral_api.revoke_share`` and ``referral_api.import_share``, on top of
``workflow.sharing`` and ``workflow.exchange``); the study search and the
patient pick-or-register of an import are the referral pages' own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_POST

from pacs_cloud import access, audit
from pacs_cloud.models import Institution
from pacs_cloud.tenancy import current_institution

from . import exchange, sharing
from .models import ImportedStudy, StudyShare
from .referral_api import (
    REVOKE_REFUSED,
    SHARE_OWNER_ROLES,
    can_import_share,
    can_revoke_share,
    import_share,
    revoke_share,
    visible_shares,
)
from .referral_views import study_choices
from .serializers import viewer_url

LIST_ROWS = 100


def _sharing(request: HttpRequest) -> Institution | None:
    """The current institution, if the user shares and receives studies there (coordinator or radiologist)."""
    institution = current_institution(request)
    if institution and access.has_role(request.user, institution, *SHARE_OWNER_ROLES):
        return institution
    return None


def parse_expiry(value: str) -> datetime | None:
    """A ``datetime-local`` (or ISO 8601) value; one without a zone is UTC, as the pages show times."""
    parsed = parse_datetime((value or "").strip())
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


@login_required
def share_list(request: HttpRequest) -> HttpResponse:
    institution = _sharing(request)
    if institution is None:
        raise Http404("Shares are kept by the institution's referral coordinators and radiologists")
    mine = visible_shares(request.user).filter(kind=StudyShare.Kind.SECOND_OPINION)
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
        importable = can_import_share(request.user, share) and share.study_id not in imports
        incoming_rows.append(
            {
                "share": share,
                "viewer_url": viewer_url(share.study_id),
                "imported": imports.get(share.study_id),
                "can_import": importable,
                "candidates": exchange.patient_candidates(institution, share.study.patient) if importable else [],
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
            "outgoing": [(s, can_revoke_share(request.user, s) and s.revoked_at is None) for s in outgoing],
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
            study = access.access_study(request.user, pk=UUID(form.get("study") or ""))
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
        expires_at = parse_expiry(form.get("expires_at", ""))
        if expires_at is None:
            problems.append("Give the date and time (UTC) when the share ends.")
        if not problems and study is not None and to is not None:
            try:
                share = sharing.do_share_for_second_opinion(
                    study,
                    to,
                    acting_user=request.user,
                    reason=form.get("reason", ""),
                    expires_at=expires_at,
                    request=request,
                )
            except sharing.ShareRefused as refused:
                problems.append(refused.message)
            else:
                messages.success(
                    request,
                    f"Shared with {to.name} until {share.expires_at:%Y-%m-%d %H:%M} UTC.",
                )
                return redirect("workflow-list-shares")
        for problem in problems:
            messages.error(request, problem)
    return render(
        request,
        "workflow/share_new.html",
        {
            "institution": institution,
            "targets": targets,
            "studies": study_choices(request, institution, panel="share-new"),
            "query": request.GET.get("q", ""),
            "form": request.POST if request.method == "POST" else {},
            "min_expiry": timezone.now().strftime("%Y-%m-%dT%H:%M"),
        },
    )


@require_POST
@login_required
def share_act(request: HttpRequest, pk: UUID) -> HttpResponse:
    """The form target of a share's Revoke (its owner) and Import (its receiver) buttons."""
    share = visible_shares(request.user).filter(pk=pk, kind=StudyShare.Kind.SECOND_OPINION).first()
    if share is None:
        raise Http404("No such share")
    what = request.POST.get("action", "")
    if what == "revoke":
        if not can_revoke_share(request.user, share):
            messages.error(request, REVOKE_REFUSED)
        elif revoke_share(share, acting_user=request.user, reason=request.POST.get("reason", ""), request=request):
            messages.success(request, f"Revoked: {share.institution.name} can no longer see the study.")
        else:
            messages.info(request, "That share had already ended.")
    elif what == "import":
        if not can_import_share(request.user, share):
            messages.error(request, "Only the institution it is shared with imports it.")
        else:
            choice = request.POST.get("patient") or ""
            birth = request.POST.get("birth_date") or ""
            try:
                imported = import_share(
                    share,
                    acting_user=request.user,
                    pk=choice if choice and choice != "new" else None,
                    patient_id=request.POST.get("patient_id", "") if choice == "new" else "",
                    birth_date=parse_date(birth) if birth else None,
                    request=request,
                )
            except exchange.ImportRefused as refused:
                messages.error(request, refused.message)
            except DjangoValidationError as error:
                messages.error(request, " ".join(error.messages))
            else:
                messages.success(request, f"Imported into your archive under patient {imported.patient.patient_id}.")
    else:
        messages.error(request, "Unknown action.")
    return redirect("workflow-list-shares")
