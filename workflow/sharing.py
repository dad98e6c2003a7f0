"""Sharing studies with another institution: the object-level grants behind referrals and second opinions.

A :class:`~workflow.models.StudyShare` row says "institution X may see study
S" (because of a referral, or a second-opinion request, possibly until an
expiry). The access policy (``pacs_cloud.access``) reads django-guardian
grants, not shares: this module writes ``archive.view_study`` to the
receiving institution's role groups (``models.role_group_name``) so that new
members inherit the grant and departing ones lose it, and removes it when the
last active share of the study with that institution ends. Reports follow
their study, so sharing a study shares its reports.

Every grant and revoke is audited (``sharing.grant``, ``sharing.revoke``);
reads through a grant are audited by the endpoints that serve them, like any
other read of a study.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils import timezone

from archive.models import Study, StudyGroupObjectPermission
from pacs_cloud import audit
from pacs_cloud.models import Institution, Role, role_group_name
from pacs_cloud.push import institution_group, notify_many

from .models import StudyShare

log = logging.getLogger(__name__)

# The receiving institution's roles that see a shared study (and so its reports).
SHARED_WITH_ROLES = (Role.CLINICIAN, Role.RADIOLOGIST, Role.REFERRAL_COORDINATOR)
SWEEP = "share expiry sweep"


class ShareRefused(Exception):
    """A share that may not be made; ``code`` is ``forbidden`` or ``invalid``."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _view_study_permission_id() -> int:
    return Permission.objects.only("pk").get(content_type__app_label="archive", codename="view_study").pk


def _groups(institution: Institution) -> list[Group]:
    return [Group.objects.get_or_create(name=role_group_name(institution, role))[0] for role in SHARED_WITH_ROLES]


def _grant(study_id: Any, institution: Institution) -> None:
    permission = _view_study_permission_id()
    StudyGroupObjectPermission.objects.bulk_create(
        [
            StudyGroupObjectPermission(group=group, permission_id=permission, content_object_id=study_id)
            for group in _groups(institution)
        ],
        ignore_conflicts=True,
    )


def _ungrant(study_id: Any, institution: Institution) -> int:
    names = [role_group_name(institution, role) for role in SHARED_WITH_ROLES]
    deleted, _ = StudyGroupObjectPermission.objects.filter(
        content_object_id=study_id, group__name__in=names, permission__codename="view_study"
    ).delete()
    return deleted


def _lock_study(study_id: Any) -> Study:
    # Grants and revokes of one study are serialised on its row, so a revoke
    # that finds no other active share cannot race a share being made.
    return Study.objects.select_for_update().select_related("patient", "institution").get(pk=study_id)


def _notify(share: StudyShare, event: str) -> None:
    groups = [institution_group(share.institution_id, role) for role in (Role.REFERRAL_COORDINATOR, Role.CLINICIAN)]
    notify_many(
        groups,
        f"workflow.share.{event}",
        {
            "id": str(share.pk),
            "study": str(share.study_id),
            "kind": share.kind,
            "referral": str(share.referral_id or ""),
        },
    )


def do_share_study(
    study: Study,
    institution: Institution,
    *,
    kind: str,
    referral: Any = None,
    acting_user: Any = None,
    actor_label: str = "",
    reason: str = "",
    expires_at: datetime | None = None,
    request: Any = None,
) -> StudyShare:
    """Let ``institution``'s clinicians, radiologists and coordinators see ``study``; audited.

    Precondition: the caller decided the actor may share it (the referral
    actions, or :func:`do_share_for_second_opinion`).
    """
    if institution.pk == study.institution_id:
        raise ShareRefused("A study is not shared with its own institution.")
    with transaction.atomic():
        locked = _lock_study(study.pk)
        share = StudyShare.objects.create(
            study=locked,
            institution=institution,
            kind=kind,
            referral=referral,
            reason=reason[:500],
            granted_by=acting_user if getattr(acting_user, "pk", None) else None,
            expires_at=expires_at,
        )
        _grant(locked.pk, institution)
        audit.record(
            "sharing.grant",
            request=request,
            actor=acting_user,
            actor_label=actor_label,
            institution=locked.institution_id,
            object_type="archive.study",
            object_id=locked.pk,
            patient_id=locked.patient.patient_id,
            detail={
                "share": str(share.pk),
                "to_institution": str(institution.pk),
                "kind": kind,
                "referral": str(getattr(referral, "pk", "") or ""),
                "expires_at": expires_at.isoformat() if expires_at else None,
                "roles": list(SHARED_WITH_ROLES),
            },
        )
        _notify(share, "granted")
    return share


def do_revoke_share(
    share: StudyShare,
    *,
    acting_user: Any = None,
    actor_label: str = "",
    reason: str = "",
    now: datetime | None = None,
    request: Any = None,
) -> bool:
    """End one share; the grant goes when no other active share of the study with the institution is left.

    Returns False when the share had already ended (safe to call twice).
    """
    now = now or timezone.now()
    with transaction.atomic():
        study = _lock_study(share.study_id)
        locked = StudyShare.objects.select_for_update().select_related("institution").get(pk=share.pk)
        if locked.revoked_at is not None:
            return False
        locked.revoked_at = now
        locked.revoked_by = acting_user if getattr(acting_user, "pk", None) else None
        locked.revoke_reason = reason[:200]
        locked.save(update_fields=["revoked_at", "revoked_by", "revoke_reason"])
        still_shared = StudyShare.objects.filter(
            study_id=study.pk, institution_id=locked.institution_id, revoked_at__isnull=True
        ).exists()
        removed = 0 if still_shared else _ungrant(study.pk, locked.institution)
        audit.record(
            "sharing.revoke",
            request=request,
            actor=acting_user,
            actor_label=actor_label,
            institution=study.institution_id,
            object_type="archive.study",
            object_id=study.pk,
            patient_id=study.patient.patient_id,
            detail={
                "share": str(locked.pk),
                "to_institution": str(locked.institution_id),
                "kind": locked.kind,
                "referral": str(locked.referral_id or ""),
                "reason": reason,
                "grant_removed": not still_shared,
                "grant_rows": removed,
            },
        )
        _notify(locked, "revoked")
    return True


def do_share_for_second_opinion(
    study: Study,
    institution: Institution,
    *,
    acting_user: Any,
    reason: str,
    expires_at: datetime | None = None,
    request: Any = None,
) -> StudyShare:
    """Share a study with another institution for a second opinion, always with an expiry.

    The study must be one the actor sees as a referral coordinator or
    radiologist of the study's own institution; the expiry defaults to
    ``SHARE_SECOND_OPINION_DAYS`` and may not be later than
    ``SHARE_MAX_DAYS`` from now.
    """
    from pacs_cloud import access

    if not access.has_role(acting_user, study.institution_id, Role.REFERRAL_COORDINATOR, Role.RADIOLOGIST):
        raise ShareRefused(
            "Only the study's own referral coordinators and radiologists share it for a second opinion.", "forbidden"
        )
    if not institution.is_active:
        raise ShareRefused("That institution is not active.")
    now = timezone.now()
    expires_at = expires_at or now + timedelta(days=settings.SHARE_SECOND_OPINION_DAYS)
    if expires_at <= now:
        raise ShareRefused("The expiry must be in the future.")
    if expires_at > now + timedelta(days=settings.SHARE_MAX_DAYS):
        raise ShareRefused(f"A share lasts at most {settings.SHARE_MAX_DAYS} days.")
    if not reason.strip():
        raise ShareRefused("Say why the study is shared.")
    return do_share_study(
        study,
        institution,
        kind=StudyShare.Kind.SECOND_OPINION,
        acting_user=acting_user,
        reason=reason,
        expires_at=expires_at,
        request=request,
    )


def do_expire_shares(*, now: datetime | None = None) -> int:
    """Revoke every share past its expiry (the periodic guarantee); safe to run twice."""
    now = now or timezone.now()
    expired = 0
    due = StudyShare.objects.filter(revoked_at__isnull=True, expires_at__lte=now).order_by("expires_at")
    for share in list(due[:1000]):
        try:
            expired += do_revoke_share(share, actor_label=SWEEP, reason="expired", now=now)
        except Exception:  # one bad row must not stop the sweep; the next run retries
            log.exception("expiring share %s failed", share.pk)
    return expired
