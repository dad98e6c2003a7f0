"""Every change to referrals, shares and imported studies.

A county hospital's referral coordinator drafts a referral of one of its
patients to another hospital, attaches studies, records the patient's
consent and sends it; the receiving hospital's coordinator accepts or
declines it, admits the patient (in care) and returns them with a discharge
summary and follow-up plan; the sender closes it. The sender may cancel it
until the patient is admitted.

Sharing follows the state: sending shares every attached study with the
receiving institution, accepting and caring keep the share, and declining,
cancelling or closing revoke it. A share is a :class:`StudyShare` row plus
the django-guardian grant ``archive.view_study`` to the receiving
institution's role groups (``pacs_cloud.models.role_group_name``), so that
new members inherit it and departing ones lose it; the grant goes when the
last active share of the study with that institution ends. Reports follow
their study. A second opinion shares one study, always with an expiry.
A receiver may import a shared study into its own archive, under its own
patient (image exchange).

A response deadline per urgency and share expiries are watched by
:func:`do_sweep_referrals` (Celery beat), which writes reminders into the
referral's timeline and pushes them to the receiving coordinators.

Every referral ``do_*`` runs in one transaction on the referral row locked
with ``SELECT ... FOR UPDATE``, changes state only through
``pacs_cloud.fsm.apply_transition`` (a transition row with actor and reason,
and an audit event) and pushes after commit. Every grant, revoke and import
is audited (``sharing.grant``, ``sharing.revoke``, ``sharing.import``).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_fsm import TransitionNotAllowed
from pydicom.dataset import Dataset

from archive.actions import grant_study_view, revoke_study_view
from archive.copies.locations import reader
from archive.ingest import IngestError, IngestSession, Source, store_instance
from archive.models import Instance, Patient, Study
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.fsm import apply_transition
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.local_time import format_local
from pacs_cloud.models import Institution, Role, Transition, role_group_name
from pacs_cloud.push import institution_group, notify_many

from ..links.actions import link_imported_study, withdraw_linked_priors
from .access import (
    IMPORT_ROLES,
    REFERRAL_ROLES,
    SHARE_OWNER_ROLES,
    SHARED_WITH_ROLES,
    acting_institution,
    active_share,
    attachable_studies,
    is_receiver,
    is_sender,
)
from .models import (
    REFERRAL_SHARING_STATES,
    REFERRAL_SWEEP,
    ImportedStudy,
    Referral,
    ReferralMessage,
    ReferralStudy,
    StudyShare,
)

log = logging.getLogger(__name__)

SHARE_SWEEP = "share expiry sweep"
ATTACHABLE_STATES = (Referral.State.DRAFT, Referral.State.SENT, Referral.State.ACCEPTED, Referral.State.IN_CARE)


class ReferralRefused(Exception):
    """A referral action not allowed now: ``code`` is ``bad_state`` (409), ``forbidden`` (403) or ``invalid`` (400)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ShareRefused(Exception):
    """A share that may not be made; ``code`` is ``forbidden`` or ``invalid``."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ImportRefused(Exception):
    """An import that may not (or could not) happen; ``code`` as for referral refusals."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Pushes ---------------------------------------------------------------------------


def _notify_referral(referral: Referral, event: str) -> None:
    """Tell both sides' coordinators (the receiver only once it was sent) after commit."""
    institutions = [referral.from_institution_id]
    if referral.state != Referral.State.DRAFT:
        institutions.append(referral.to_institution_id)
    groups = [institution_group(i, role) for i in institutions for role in REFERRAL_ROLES]
    notify_many(
        groups,
        f"workflow.referral.{event}",
        {
            "id": str(referral.pk),
            "state": referral.state,
            "event": event,
            "from": str(referral.from_institution_id),
            "to": str(referral.to_institution_id),
        },
    )


# Creating and preparing ---------------------------------------------------------------


def response_window(urgency: str) -> timedelta:
    return timedelta(hours=settings.REFERRAL_RESPONSE_HOURS.get(urgency, settings.REFERRAL_RESPONSE_HOURS["routine"]))


def do_create_referral(
    *,
    acting_user: Any,
    from_institution: Institution,
    to_institution: Institution,
    patient: Patient,
    reason: str,
    direction: str = Referral.Direction.UPWARD,
    urgency: str = Referral.Urgency.ROUTINE,
    clinical_summary: str = "",
    share_until: datetime | None = None,
    studies: Iterable[Study] = (),
    request: Any = None,
) -> Referral:
    """A draft referral of ``patient`` from the actor's institution, with ``studies`` attached."""
    if not core_access.has_role(acting_user, from_institution, Role.REFERRAL_COORDINATOR):
        raise ReferralRefused("Only the sending institution's referral coordinators create its referrals.", "forbidden")
    if to_institution.pk == from_institution.pk:
        raise ReferralRefused("A referral goes to another institution.")
    if not to_institution.is_active:
        raise ReferralRefused("That institution is not active.")
    if patient.institution_id != from_institution.pk:
        raise ReferralRefused("The patient must be one of the sending institution's patients.")
    if not reason.strip():
        raise ReferralRefused("Give the reason for the referral.")
    if share_until is not None and share_until <= timezone.now():
        raise ReferralRefused("The end of sharing must be in the future.")
    with transaction.atomic():
        now = timezone.now()
        referral = Referral.objects.create(
            patient=patient,
            from_institution=from_institution,
            to_institution=to_institution,
            direction=direction,
            urgency=urgency,
            reason=reason.strip()[:500],
            clinical_summary=clinical_summary,
            share_until=share_until,
            created_by=acting_user,
            created_at=now,
            updated_at=now,
        )
        # The creation opens the timeline like any transition.
        Transition.objects.create(
            content_type=ContentType.objects.get_for_model(Referral),
            object_id=referral.pk,
            source="",
            target=referral.state,
            method="create",
            actor=acting_user,
            institution=from_institution,
            reason=referral.reason,
            time=now,
        )
        audit.record(
            "workflow.referral.create",
            request=request,
            actor=acting_user,
            institution=from_institution,
            object_type="workflow.referral",
            object_id=referral.pk,
            patient_id=patient.patient_id,
            detail={"to_institution": str(to_institution.pk), "direction": direction, "urgency": urgency},
        )
        for study in studies:
            _attach(referral, study, acting_user=acting_user, request=request)
        _notify_referral(referral, "created")
    return referral


def _lock(referral: Referral) -> Referral:
    return (
        Referral.objects.select_for_update(of=("self",))
        .select_related("patient", "from_institution", "to_institution")
        .get(pk=referral.pk)
    )


def _lock_studies(ids: Iterable[Any]) -> None:
    """Lock study rows, in key order, before anything is audited.

    Every writer of the audit trail takes its lock (``pacs_cloud.audit``), and
    a share or revoke locks its study first; taking the studies before the
    first audit event keeps one lock order everywhere: referral, studies,
    audit. (A referral that audited first and then locked a study would
    deadlock with a share of that study made at the same moment.)
    """
    list(Study.objects.select_for_update().filter(pk__in=list(ids)).order_by("pk").values_list("pk", flat=True))


def _attach(referral: Referral, study: Study, *, acting_user: Any, request: Any = None) -> ReferralStudy:
    if not attachable_studies(acting_user, referral).filter(pk=study.pk).exists():
        raise ReferralRefused(
            "Attach only studies of this patient that you can see at your institution"
            " (the receiver: while the patient is in its care)."
        )
    try:
        with transaction.atomic():
            row = ReferralStudy.objects.create(referral=referral, study=study, attached_by=acting_user)
    except IntegrityError:
        raise ReferralRefused("That study is attached already.") from None
    audit.record(
        "workflow.referral.attach",
        request=request,
        actor=acting_user,
        institution=study.institution_id,
        object_type="workflow.referral",
        object_id=referral.pk,
        patient_id=referral.patient.patient_id,
        detail={"study": str(study.pk)},
    )
    if referral.state in REFERRAL_SHARING_STATES:
        _share(referral, study, acting_user=acting_user, request=request)
    return row


def do_attach_study(referral: Referral, study: Study, *, acting_user: Any, request: Any = None) -> ReferralStudy:
    """Attach one more study; on a referral already sent it is shared at once (with the other side).

    The sender attaches its patient's studies until the patient is returned;
    the receiver attaches its own studies while the patient is in its care,
    so that they go back down with the patient.
    """
    with transaction.atomic():
        locked = _lock(referral)
        receiving = not is_sender(acting_user, locked) and is_receiver(acting_user, locked)
        if not receiving and not is_sender(acting_user, locked):
            raise ReferralRefused("Only the two institutions' referral coordinators attach studies.", "forbidden")
        if (receiving and locked.state != Referral.State.IN_CARE) or locked.state not in ATTACHABLE_STATES:
            raise ReferralRefused(f"Studies cannot be attached to a {locked.state} referral.", "bad_state")
        _lock_studies([study.pk])
        row = _attach(locked, study, acting_user=acting_user, request=request)
        _touch(locked)
        _notify_referral(locked, "updated")
    return row


def do_detach_study(referral: Referral, study: Study, *, acting_user: Any, request: Any = None) -> None:
    """Take a study off a draft (a sent referral's studies stay until it ends)."""
    with transaction.atomic():
        locked = _lock(referral)
        if not is_sender(acting_user, locked):
            raise ReferralRefused("Only the sending institution's referral coordinators detach studies.", "forbidden")
        if locked.state != Referral.State.DRAFT:
            raise ReferralRefused("Only a draft's studies can be detached.", "bad_state")
        deleted, _ = ReferralStudy.objects.filter(referral=locked, study_id=study.pk).delete()
        if not deleted:
            raise ReferralRefused("That study is not attached.")
        audit.record(
            "workflow.referral.detach",
            request=request,
            actor=acting_user,
            institution=locked.from_institution_id,
            object_type="workflow.referral",
            object_id=locked.pk,
            patient_id=locked.patient.patient_id,
            detail={"study": str(study.pk)},
        )
        _touch(locked)


def do_record_consent(
    referral: Referral, *, acting_user: Any, method: str, note: str = "", request: Any = None
) -> Referral:
    """Record how the patient consented to the transfer of their records (before sending)."""
    if method not in Referral.ConsentMethod.values:
        raise ReferralRefused(f"Consent is one of: {', '.join(Referral.ConsentMethod.values)}.")
    with transaction.atomic():
        locked = _lock(referral)
        if not is_sender(acting_user, locked):
            raise ReferralRefused("Only the sending institution's referral coordinators record consent.", "forbidden")
        if locked.state != Referral.State.DRAFT:
            raise ReferralRefused("Consent is recorded before the referral is sent.", "bad_state")
        locked.consent_method = method
        locked.consent_note = note.strip()[:500]
        locked.consent_recorded_at = timezone.now()
        locked.consent_recorded_by = acting_user
        locked.updated_at = locked.consent_recorded_at
        locked.save(
            update_fields=["consent_method", "consent_note", "consent_recorded_at", "consent_recorded_by", "updated_at"]
        )
        audit.record(
            "workflow.referral.consent",
            request=request,
            actor=acting_user,
            institution=locked.from_institution_id,
            object_type="workflow.referral",
            object_id=locked.pk,
            patient_id=locked.patient.patient_id,
            detail={"method": method, "note": locked.consent_note},
        )
        _notify_referral(locked, "updated")
    return locked


def _touch(referral: Referral) -> None:
    Referral.objects.filter(pk=referral.pk).update(updated_at=timezone.now())


def _share(referral: Referral, study: Study, *, acting_user: Any, request: Any = None) -> StudyShare:
    # A study of the receiver's (made while in its care) is shared back with the sender.
    other = referral.from_institution if study.institution_id == referral.to_institution_id else referral.to_institution
    return do_share_study(
        study,
        other,
        kind=StudyShare.Kind.REFERRAL,
        referral=referral,
        acting_user=acting_user,
        reason=f"referral {referral.pk}",
        expires_at=referral.share_until,
        request=request,
    )


def _revoke_all(
    referral: Referral, *, acting_user: Any, actor_label: str = "", reason: str, request: Any = None
) -> int:
    revoked = 0
    for share in StudyShare.objects.filter(referral=referral, revoked_at__isnull=True).order_by("study_id"):
        revoked += do_revoke_share(
            share, acting_user=acting_user, actor_label=actor_label, reason=reason, request=request
        )
    # The referral's consent ends with it: priors of the patient compared at the receiver go too.
    withdraw_linked_priors([referral.patient_id], reason=reason)
    return revoked


# Transitions -------------------------------------------------------------------------

SENDER, RECEIVER = "sender", "receiver"


def _transition(
    referral: Referral,
    method: str,
    *,
    acting_user: Any,
    side: str,
    reason: str = "",
    update_fields: tuple[str, ...] = (),
    request: Any = None,
    after: Any = None,
    **kwargs: Any,
) -> Referral:
    with transaction.atomic():
        locked = _lock(referral)
        allowed = is_sender(acting_user, locked) if side == SENDER else is_receiver(acting_user, locked)
        if not allowed:
            who = "sending" if side == SENDER else "receiving"
            raise ReferralRefused(f"Only the {who} institution's referral coordinators may do that.", "forbidden")
        _lock_studies(locked.attachments.values_list("study_id", flat=True))
        now = timezone.now()
        locked.updated_at = now
        try:
            apply_transition(
                locked,
                method,
                actor=acting_user,
                institution=locked.from_institution_id if side == SENDER else locked.to_institution_id,
                reason=reason,
                update_fields=[*update_fields, "updated_at"],
                audit_detail={"patient": locked.patient.patient_id},
                now=now,
                **kwargs,
            )
        except TransitionNotAllowed:
            raise ReferralRefused(f"A {locked.state} referral cannot do that.", "bad_state") from None
        if after is not None:
            after(locked)
        _notify_referral(locked, method)
    return locked


def do_send_referral(referral: Referral, *, acting_user: Any, reason: str = "", request: Any = None) -> Referral:
    """Send a draft: needs recorded consent; shares every attached study with the receiver."""
    now = timezone.now()
    window = response_window(referral.urgency)

    def share_studies(locked: Referral) -> None:
        # Checked on the locked row (the transition is rolled back with this refusal).
        if not locked.consent_recorded_at:
            raise ReferralRefused("Record the patient's consent before sending the referral.")
        for row in locked.attachments.select_related("study").order_by("study_id"):
            _share(locked, row.study, acting_user=acting_user, request=request)

    return _transition(
        referral,
        "send",
        acting_user=acting_user,
        side=SENDER,
        reason=reason or referral.reason,
        update_fields=("sent_at", "response_due_at", "next_reminder_at"),
        request=request,
        after=share_studies,
        response_due_at=now + window,
        # First reminder when three quarters of the response window have passed.
        next_reminder_at=now + window * 3 / 4,
    )


def do_accept_referral(referral: Referral, *, acting_user: Any, reason: str = "", request: Any = None) -> Referral:
    """The receiver takes the patient; the studies stay shared."""
    return _transition(
        referral,
        "accept",
        acting_user=acting_user,
        side=RECEIVER,
        reason=reason,
        update_fields=("responded_at", "next_reminder_at"),
        request=request,
    )


def do_decline_referral(referral: Referral, *, acting_user: Any, reason: str, request: Any = None) -> Referral:
    """The receiver declines (with a reason); the studies are no longer shared."""
    if not reason.strip():
        raise ReferralRefused("Say why the referral is declined.")

    def revoke(locked: Referral) -> None:
        _revoke_all(locked, acting_user=acting_user, reason="referral declined", request=request)

    return _transition(
        referral,
        "decline",
        acting_user=acting_user,
        side=RECEIVER,
        reason=reason,
        update_fields=("responded_at", "ended_at", "decline_reason", "next_reminder_at"),
        request=request,
        after=revoke,
        decline_reason=reason.strip(),
    )


def do_admit_referral(referral: Referral, *, acting_user: Any, reason: str = "", request: Any = None) -> Referral:
    """The accepted patient arrived and is in the receiver's care."""
    return _transition(referral, "admit", acting_user=acting_user, side=RECEIVER, reason=reason, request=request)


def do_return_referral(
    referral: Referral,
    *,
    acting_user: Any,
    discharge_summary: str,
    follow_up_plan: str,
    reason: str = "",
    request: Any = None,
) -> Referral:
    """The downward referral back: the patient returns with a discharge summary and a follow-up plan."""
    if not discharge_summary.strip() or not follow_up_plan.strip():
        raise ReferralRefused("Returning a patient needs a discharge summary and a follow-up plan.")
    return _transition(
        referral,
        "return_to_sender",
        acting_user=acting_user,
        side=RECEIVER,
        reason=reason or "returned with discharge summary and follow-up plan",
        update_fields=("returned_at", "discharge_summary", "follow_up_plan"),
        request=request,
        discharge_summary=discharge_summary.strip(),
        follow_up_plan=follow_up_plan.strip(),
    )


def do_close_referral(referral: Referral, *, acting_user: Any, reason: str = "", request: Any = None) -> Referral:
    """The sender closes a returned referral; the receiver no longer sees the studies."""

    def revoke(locked: Referral) -> None:
        _revoke_all(locked, acting_user=acting_user, reason="referral closed", request=request)

    return _transition(
        referral,
        "close",
        acting_user=acting_user,
        side=SENDER,
        reason=reason,
        update_fields=("ended_at",),
        request=request,
        after=revoke,
    )


def do_cancel_referral(referral: Referral, *, acting_user: Any, reason: str, request: Any = None) -> Referral:
    """The sender withdraws a referral not yet in care; sharing ends."""
    if not reason.strip():
        raise ReferralRefused("Say why the referral is cancelled.")

    def revoke(locked: Referral) -> None:
        _revoke_all(locked, acting_user=acting_user, reason="referral cancelled", request=request)

    return _transition(
        referral,
        "cancel",
        acting_user=acting_user,
        side=SENDER,
        reason=reason,
        update_fields=("ended_at", "next_reminder_at"),
        request=request,
        after=revoke,
    )


# Messages -----------------------------------------------------------------------------


def do_post_message(referral: Referral, *, acting_user: Any, body: str, request: Any = None) -> ReferralMessage:
    """A message from one team to the other, in the referral's timeline."""
    body = body.strip()
    if not body:
        raise ReferralRefused("A message needs some text.")
    if len(body) > 5000:
        raise ReferralRefused("A message is at most 5000 characters.")
    with transaction.atomic():
        locked = _lock(referral)
        ids = core_access.institution_ids(acting_user, REFERRAL_ROLES)
        side = acting_institution(acting_user, locked)
        if side not in ids or (side == locked.to_institution_id and locked.state == Referral.State.DRAFT):
            raise ReferralRefused("Only the two institutions' teams write on a referral.", "forbidden")
        message = ReferralMessage.objects.create(
            referral=locked, author=acting_user, institution_id=side, body=body, kind=ReferralMessage.Kind.MESSAGE
        )
        audit.record(
            "workflow.referral.message",
            request=request,
            actor=acting_user,
            institution=side,
            object_type="workflow.referral",
            object_id=locked.pk,
            patient_id=locked.patient.patient_id,
            detail={"message": str(message.pk)},
        )
        _touch(locked)
        _notify_referral(locked, "message")
    return message


# The deadline sweep -----------------------------------------------------------------------


def _remind(pk: Any, now: datetime) -> bool:
    with transaction.atomic():
        locked = Referral.objects.select_for_update(skip_locked=True).select_related("to_institution").filter(pk=pk)
        referral = locked.first()
        if (
            referral is None
            or referral.state != Referral.State.SENT
            or referral.next_reminder_at is None
            or referral.next_reminder_at > now
            or referral.response_due_at is None
        ):
            return False
        due = referral.response_due_at
        # The reminder is addressed to the receiving team: in its hospital's time and zone.
        shown = format_local(due, referral.to_institution.time_zone)
        if now < due:
            text = f"Reminder: a response is due by {shown}."
            following = due
        else:
            text = f"Reminder: the response was due at {shown} and is overdue."
            following = now + timedelta(hours=settings.REFERRAL_REMINDER_HOURS)
        ReferralMessage.objects.create(
            referral=referral, kind=ReferralMessage.Kind.REMINDER, institution=referral.to_institution, body=text
        )
        referral.reminders_sent += 1
        referral.next_reminder_at = following
        referral.save(update_fields=["reminders_sent", "next_reminder_at"])
        audit.record(
            "workflow.referral.reminder",
            actor_label=REFERRAL_SWEEP,
            institution=referral.to_institution_id,
            object_type="workflow.referral",
            object_id=referral.pk,
            detail={"due_at": due.isoformat(), "overdue": now >= due, "reminder": referral.reminders_sent},
        )
        _notify_referral(referral, "reminder")
    return True


def do_send_reminders(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    due = Referral.objects.filter(state=Referral.State.SENT, next_reminder_at__lte=now)
    return sum(_remind(pk, now) for pk in list(due.values_list("pk", flat=True)[:1000]))


def do_sweep_referrals(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic guarantee behind deadlines and expiries (Celery beat); safe to run twice."""
    now = now or timezone.now()
    return {"reminded": do_send_reminders(now=now), "expired_shares": do_expire_shares(now=now)}


# Shares and their grants ---------------------------------------------------------------


def _groups(institution: Institution) -> list[Group]:
    return [Group.objects.get_or_create(name=role_group_name(institution, role))[0] for role in SHARED_WITH_ROLES]


def _grant(study_id: Any, institution: Institution) -> None:
    grant_study_view(study_id, groups=_groups(institution))


def _ungrant(study_id: Any, institution: Institution) -> int:
    names = [role_group_name(institution, role) for role in SHARED_WITH_ROLES]
    return revoke_study_view(study_id, groups=Group.objects.filter(name__in=names))


def _lock_study(study_id: Any) -> Study:
    # Grants and revokes of one study are serialised on its row, so a revoke
    # that finds no other active share cannot race a share being made.
    return Study.objects.select_for_update().select_related("patient", "institution").get(pk=study_id)


def _notify_share(share: StudyShare, event: str) -> None:
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
        _notify_share(share, "granted")
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
        _notify_share(locked, "revoked")
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
    if not core_access.has_role(acting_user, study.institution_id, *SHARE_OWNER_ROLES):
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


def do_end_second_opinion(share: StudyShare, *, acting_user: Any, reason: str = "", request: Any = None) -> bool:
    """End a second-opinion share now, by its owner; False when it had already ended.

    Precondition: ``access.can_revoke_share`` (the study's own coordinators
    and radiologists; a referral's shares end with the referral).
    """
    return do_revoke_share(
        share, acting_user=acting_user, reason=reason or "ended by the owner", now=timezone.now(), request=request
    )


def do_expire_shares(*, now: datetime | None = None) -> int:
    """Revoke every share past its expiry (the periodic guarantee); safe to run twice."""
    now = now or timezone.now()
    expired = 0
    due = StudyShare.objects.filter(revoked_at__isnull=True, expires_at__lte=now).order_by("expires_at")
    for share in list(due[:1000]):
        try:
            expired += do_revoke_share(share, actor_label=SHARE_SWEEP, reason="expired", now=now)
        except Exception:  # one bad row must not stop the sweep; the next run retries
            log.exception("expiring share %s failed", share.pk)
    return expired


# Image exchange -------------------------------------------------------------------------


def do_resolve_local_patient(
    institution: Institution,
    source: Patient,
    *,
    acting_user: Any,
    pk: Any = None,
    patient_id: str = "",
    name: str = "",
    birth_date: dt.date | None = None,
    sex: str = "",
    request: Any = None,
) -> Patient:
    """The receiver's own patient for an import: one it picked, else found or registered.

    Registering defaults to the shared study's demographics with an
    identifier issued by the receiver (``WORKLIST_PATIENT_ID_FORMAT``).
    Raises ``django.core.exceptions.ValidationError`` for a clash.
    """
    from worklist.actions import do_find_or_register_patient

    return do_find_or_register_patient(
        institution,
        pk=pk,
        patient_id=patient_id,
        name=name or source.name,
        birth_date=birth_date if birth_date is not None else source.birth_date,
        sex=sex or source.sex,
        actor=acting_user,
        request=request,
        # The receiver reconciles on purpose: it saw its candidates and chose to register.
        allow_possible_duplicate=True,
    )


def _relabel(ds: Dataset, patient: Patient, source: Patient) -> None:
    """The local patient's identity in the Patient module; the sender's identifier kept as another ID."""
    if not (patient.name + patient.patient_id).isascii():
        # Values are held decoded: writing them all as UTF-8 keeps every other text intact.
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientName = patient.name
    ds.PatientBirthDate = dicom_datetime.format_da(patient.birth_date)
    ds.PatientSex = patient.sex
    other = Dataset()
    other.PatientID = source.patient_id
    other.IssuerOfPatientID = source.issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def do_import_shared_study(study: Study, *, patient: Patient, acting_user: Any, request: Any = None) -> ImportedStudy:
    """Copy a study shared with ``patient``'s institution into that institution's archive.

    Preconditions checked here: the actor is a referral coordinator or
    radiologist of the receiving institution, and the study is shared with it
    right now. Importing again under the same patient returns the earlier
    import (the ingest service recognises identical objects).
    """
    receiver = patient.institution
    if not core_access.has_role(acting_user, receiver, *IMPORT_ROLES):
        raise ImportRefused("Only the receiving institution's coordinators and radiologists import.", "forbidden")
    if study.institution_id == receiver.pk:
        raise ImportRefused("The study is already in this institution's archive.")
    share = active_share(study, receiver)
    if share is None:
        raise ImportRefused("Only a study shared with your institution can be imported.", "forbidden")
    previous = ImportedStudy.objects.filter(source_study=study, institution=receiver).first()
    if previous is not None and previous.patient_id != patient.pk:
        raise ImportRefused(f"This study was imported already, for patient {previous.patient.patient_id}.", "bad_state")
    source_patient = study.patient
    storage = reader()
    session = IngestSession(Source("import", f"shared by {study.institution.slug}"[:64], actor=acting_user, address=""))
    instances = list(Instance.objects.filter(series__study=study).order_by("series_id", "instance_number", "pk"))
    copy: Study | None = None
    with tempfile.TemporaryDirectory(prefix="pacs-import-") as folder:
        for instance in instances:
            with storage.open(instance.storage_key) as handle:
                ds = pydicom.dcmread(handle)
            _relabel(ds, patient, source_patient)
            path = Path(folder) / f"{instance.pk}.dcm"
            ds.save_as(path, enforce_file_format=True)
            try:
                result = store_instance(path, institution=receiver, session=session)
            except IngestError as error:
                raise ImportRefused(f"The archive refused {instance.sop_instance_uid}: {error.reason}") from error
            finally:
                path.unlink(missing_ok=True)
            copy = result.instance.series.study
    if copy is None:
        raise ImportRefused("The shared study has no images to import.")
    with transaction.atomic():
        imported, created = ImportedStudy.objects.get_or_create(
            source_study=study,
            institution=receiver,
            defaults={
                "study": copy,
                "patient": patient,
                "share": share,
                "instances": len(instances),
                "imported_by": acting_user,
            },
        )
        audit.record(
            "sharing.import",
            request=request,
            actor=acting_user,
            institution=receiver,
            object_type="archive.study",
            object_id=copy.pk,
            patient_id=patient.patient_id,
            detail={
                "source_study": str(study.pk),
                "source_institution": str(study.institution_id),
                "source_patient_id": source_patient.patient_id,
                "share": str(share.pk),
                "instances": len(instances),
                "stored": session.stored,
                "again": not created,
            },
        )
        # The receiver chose its patient for this study: the two are one person.
        link_imported_study(imported, acting_user=acting_user, request=request)
    return imported


def do_import_share(share: StudyShare, *, acting_user: Any, request: Any = None, **patient: Any) -> ImportedStudy:
    """Import a shared study under a patient of the receiving institution (``patient``: as for
    :func:`do_resolve_local_patient`). Precondition: ``access.can_import_share``."""
    study = share.study
    local = do_resolve_local_patient(
        share.institution, study.patient, acting_user=acting_user, request=request, **patient
    )
    return do_import_shared_study(study, patient=local, acting_user=acting_user, request=request)
