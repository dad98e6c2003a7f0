"""Break-glass writes: opening an emergency access, and ending the expired ones.

Grants go through :func:`archive.actions.grant_study_view` and
:func:`~archive.actions.revoke_study_view` only; the alerts (push, e-mail)
are sent after commit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pacs_cloud import audit, push
from pacs_cloud.access import memberships
from pacs_cloud.models import Institution, Role

from ..actions import grant_study_view, revoke_study_view
from ..models import Study
from .models import BreakGlassAccess, BreakGlassAllowance

# Who may break glass: the roles that treat or read.
BREAK_GLASS_ROLES = (Role.CLINICIAN, Role.RADIOLOGIST)
MIN_REASON = 10


class BreakGlassError(Exception):
    """A request refused with a reason the caller may see (``not_found``: answer 404)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def eligible_institutions(user: Any) -> set[Any]:
    """Institutions through which ``user`` may break glass (a clinician or radiologist role there)."""
    return set(memberships(user).filter(role__in=BREAK_GLASS_ROLES).values_list("institution_id", flat=True))


def reachable_study(user: Any, study_instance_uid: str) -> tuple[Study, Any]:
    """The study ``user`` may break glass on, and the institution they ask through; 404 alike otherwise."""
    mine = eligible_institutions(user)
    allowances = dict(
        BreakGlassAllowance.objects.filter(allowed_id__in=mine).values_list("institution_id", "allowed_id")
    )
    study = (
        Study.objects.filter(study_instance_uid=study_instance_uid, institution_id__in=list(allowances))
        .exclude(institution_id__in=mine)
        .order_by("received_at")
        .first()
    )
    if study is None:
        raise BreakGlassError("No such study", not_found=True)
    return study, allowances[study.institution_id]


def do_break_glass(user: Any, study_instance_uid: str, *, reason: str, request: Any = None) -> BreakGlassAccess:
    """Give ``user`` read access to the study for ``BREAK_GLASS_MINUTES``, alert the administrators, audit it."""
    reason = (reason or "").strip()
    if len(reason) < MIN_REASON:
        raise BreakGlassError(f"State the emergency (at least {MIN_REASON} characters).")
    study, via = reachable_study(user, (study_instance_uid or "").strip())
    now = timezone.now()
    with transaction.atomic():
        # An earlier access to the same study that expired but was not swept yet
        # ends now: its grant row is the one this access writes again.
        BreakGlassAccess.objects.filter(user=user, study=study, ended_at__isnull=True, expires_at__lte=now).update(
            ended_at=now
        )
        access = BreakGlassAccess.objects.create(
            user=user,
            via_institution_id=via,
            study=study,
            institution_id=study.institution_id,
            reason=reason[:2000],
            started_at=now,
            expires_at=now + dt.timedelta(minutes=settings.BREAK_GLASS_MINUTES),
        )
        grant_study_view(study, user=user)
        detail = {
            "break_glass": str(access.pk),
            "study_instance_uid": study.study_instance_uid,
            "reason": access.reason,
            "expires_at": access.expires_at.isoformat(),
        }
        for institution in (study.institution_id, via):
            audit.record(
                "archive.break_glass.opened",
                request=request,
                actor=user,
                institution=institution,
                object_type="archive.study",
                object_id=study.pk,
                patient_id=study.patient.patient_id,
                detail=detail,
            )
        _alert(access)
    return access


def _alert(access: BreakGlassAccess) -> None:
    from . import tasks

    data = {
        "id": str(access.pk),
        "user": access.user.get_username(),
        "institution": str(access.institution_id),
        "expires_at": access.expires_at.isoformat(),
    }
    groups = [
        push.institution_group(institution, Role.INSTITUTION_ADMIN)
        for institution in sorted({str(access.institution_id), str(access.via_institution_id)})
    ]
    push.notify_many(groups, "break_glass.opened", data)
    tasks.mail_break_glass.delay_on_commit(str(access.pk))


def administrators(access: BreakGlassAccess) -> list[Any]:
    """The active administrators of both institutions concerned, each once."""
    from pacs_cloud.models import Membership

    rows = Membership.objects.filter(
        institution_id__in=[access.institution_id, access.via_institution_id],
        role=Role.INSTITUTION_ADMIN,
        is_active=True,
        user__is_active=True,
    ).select_related("user")
    return list({m.user_id: m.user for m in rows}.values())


def do_end_expired_break_glass(now: dt.datetime | None = None) -> int:
    """Take back the grants of expired accesses (the door already ignores them); the number ended."""
    now = now or timezone.now()
    ended = 0
    for pk in BreakGlassAccess.objects.filter(ended_at__isnull=True, expires_at__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            access = (
                BreakGlassAccess.objects.select_for_update()
                .filter(pk=pk, ended_at__isnull=True, expires_at__lte=now)
                .first()
            )
            if access is None:
                continue
            access.ended_at = now
            access.save(update_fields=["ended_at"])
            # Another access of the same user to the same study still running keeps the grant.
            still = BreakGlassAccess.objects.filter(
                user_id=access.user_id, study_id=access.study_id, ended_at__isnull=True, expires_at__gt=now
            ).exists()
            if not still:
                revoke_study_view(access.study_id, user=access.user_id)
            audit.record(
                "archive.break_glass.ended",
                actor_label="break-glass sweep",
                institution=access.institution_id,
                object_type="archive.study",
                object_id=access.study_id,
                detail={"break_glass": str(access.pk), "user": access.user_id},
            )
            ended += 1
    return ended


def do_allow_break_glass(institution: Institution, allowed: Institution, *, acting_user: Any) -> None:
    """Let ``allowed``'s clinicians and radiologists break glass on ``institution``'s studies."""
    with transaction.atomic():
        _, created = BreakGlassAllowance.objects.get_or_create(institution=institution, allowed=allowed)
        if created:
            audit.record(
                "archive.break_glass.allowed",
                actor=acting_user,
                institution=institution,
                object_type="pacs_cloud.institution",
                object_id=allowed.pk,
                detail={"allowed": allowed.name},
            )


def do_disallow_break_glass(allowance: BreakGlassAllowance, *, acting_user: Any) -> None:
    """Withdraw an allowance; accesses already open run to their expiry."""
    with transaction.atomic():
        removed = BreakGlassAllowance.objects.filter(pk=allowance.pk).delete()[0]
        if removed:
            audit.record(
                "archive.break_glass.disallowed",
                actor=acting_user,
                institution=allowance.institution_id,
                object_type="pacs_cloud.institution",
                object_id=allowance.allowed_id,
            )
