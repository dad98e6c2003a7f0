"""Two-way referrals between hospitals: who sees them, and every change to them.

A county hospital's referral coordinator drafts a referral of one of its
patients to another hospital, attaches studies, records the patient's
consent and sends it; the receiving hospital's coordinator accepts or
declines it, admits the patient (in care) and returns them with a discharge
summary and follow-up plan; the sender closes it. The sender may cancel it
until the patient is admitted.

Sharing follows the state (``workflow.sharing``): sending shares every
attached study with the receiving institution, accepting and caring keep the
share, and declining, cancelling or closing revoke it. A response deadline
per urgency is watched by :func:`do_sweep_referrals` (Celery beat), which
writes reminders into the referral's timeline and pushes them to the
receiving coordinators.

Every ``do_*`` runs in one transaction on the referral row locked with
``SELECT ... FOR UPDATE``, changes state only through
``pacs_cloud.fsm.apply_transition`` (a transition row with actor and reason,
and an audit event) and pushes after commit. Visibility: the referral
coordinators and clinicians of the sending institution see its referrals,
those of the receiving institution once it is sent; ``access_referral``
answers 404 alike for missing and not yours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from archive.models import Patient, Study
from pacs_cloud import access, audit
from pacs_cloud.fsm import apply_transition, history
from pacs_cloud.models import Institution, Role, Transition
from pacs_cloud.push import institution_group, notify_many

from . import sharing
from .models import (
    REFERRAL_SHARING_STATES,
    Referral,
    ReferralMessage,
    ReferralStudy,
    StudyShare,
)

# Roles that see an institution's referrals; only coordinators change them.
REFERRAL_ROLES = (Role.REFERRAL_COORDINATOR, Role.CLINICIAN)
SWEEP = "referral deadline sweep"
ATTACHABLE_STATES = (Referral.State.DRAFT, Referral.State.SENT, Referral.State.ACCEPTED, Referral.State.IN_CARE)


class ReferralRefused(Exception):
    """A referral action not allowed now: ``code`` is ``bad_state`` (409), ``forbidden`` (403) or ``invalid`` (400)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Who sees what ------------------------------------------------------------------


def visible_referrals(user: Any) -> QuerySet[Referral]:
    """Referrals of the caller's institutions: sent from them, or sent (not drafted) to them."""
    ids = access.institution_ids(user, REFERRAL_ROLES)
    if not ids:
        return Referral.objects.none()
    return Referral.objects.filter(
        Q(from_institution_id__in=ids) | (Q(to_institution_id__in=ids) & ~Q(state=Referral.State.DRAFT))
    )


def access_referral(user: Any, pk: object) -> Referral:
    try:
        return (
            visible_referrals(user)
            .select_related("patient", "from_institution", "to_institution", "created_by")
            .get(pk=UUID(str(pk)))
        )
    except (ValueError, Referral.DoesNotExist):
        raise Http404("No such referral") from None


def is_sender(user: Any, referral: Referral) -> bool:
    return access.has_role(user, referral.from_institution_id, Role.REFERRAL_COORDINATOR)


def is_receiver(user: Any, referral: Referral) -> bool:
    return referral.state != Referral.State.DRAFT and access.has_role(
        user, referral.to_institution_id, Role.REFERRAL_COORDINATOR
    )


def shows_patient(user: Any, referral: Referral, mine: set[Any] | None = None) -> bool:
    """The patient's identity: the sender always; the receiver unless it never took the patient.

    A receiver keeps the record of a patient it accepted; one whose referral
    was declined or cancelled before admission sees that it ended, not whom it
    was about.
    """
    if mine is None:
        mine = access.institution_ids(user, REFERRAL_ROLES)
    if referral.from_institution_id in mine:
        return True
    return referral.state not in (Referral.State.DECLINED, Referral.State.CANCELLED)


def acting_institution(user: Any, referral: Referral) -> Any:
    """The side the caller acts for (the sender when they belong to both)."""
    ids = access.institution_ids(user, REFERRAL_ROLES)
    return referral.from_institution_id if referral.from_institution_id in ids else referral.to_institution_id


def attachable_studies(user: Any, referral: Referral) -> QuerySet[Study]:
    """Studies the caller may attach: the sender's coordinators, studies of the referral's patient
    they can see at the sending institution; the receiver's, while the patient is in their care,
    their own institution's studies (images made there travel back with the patient)."""
    if is_sender(user, referral):
        return access.visible_studies(user).filter(
            institution_id=referral.from_institution_id, patient_id=referral.patient_id
        )
    if is_receiver(user, referral) and referral.state == Referral.State.IN_CARE:
        return access.visible_studies(user).filter(institution_id=referral.to_institution_id)
    return Study.objects.none()


def shared_study_ids(referral: Referral) -> set[Any]:
    return set(StudyShare.objects.filter(referral=referral, revoked_at__isnull=True).values_list("study_id", flat=True))


# Timeline -----------------------------------------------------------------------


@dataclass
class TimelineEntry:
    time: datetime
    kind: str  # "transition", "message" or "reminder"
    actor: str
    institution: str
    text: str
    source: str = ""
    target: str = ""


def timeline(referral: Referral) -> list[TimelineEntry]:
    """Every transition and message of the referral, oldest first."""
    names: dict[Any, str] = {
        referral.from_institution_id: referral.from_institution.name,
        referral.to_institution_id: referral.to_institution.name,
    }
    entries = [
        TimelineEntry(
            time=t.time,
            kind="transition",
            actor=(t.actor.display_name or t.actor.username) if t.actor else t.actor_label,
            institution=names.get(t.institution_id, ""),
            text=t.reason,
            source=t.source,
            target=t.target,
        )
        for t in history(referral)
    ]
    for m in referral.messages.select_related("author"):
        entries.append(
            TimelineEntry(
                time=m.created_at,
                kind=m.kind,
                actor=(m.author.display_name or m.author.username) if m.author else SWEEP,
                institution=names.get(m.institution_id, ""),
                text=m.body,
            )
        )
    return sorted(entries, key=lambda e: e.time)


# Pushes ---------------------------------------------------------------------------


def _notify(referral: Referral, event: str) -> None:
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
    if not access.has_role(acting_user, from_institution, Role.REFERRAL_COORDINATOR):
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
        _notify(referral, "created")
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
        _notify(locked, "updated")
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
        _notify(locked, "updated")
    return locked


def _touch(referral: Referral) -> None:
    Referral.objects.filter(pk=referral.pk).update(updated_at=timezone.now())


def _share(referral: Referral, study: Study, *, acting_user: Any, request: Any = None) -> StudyShare:
    # A study of the receiver's (made while in its care) is shared back with the sender.
    other = referral.from_institution if study.institution_id == referral.to_institution_id else referral.to_institution
    return sharing.do_share_study(
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
        revoked += sharing.do_revoke_share(
            share, acting_user=acting_user, actor_label=actor_label, reason=reason, request=request
        )
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
        _notify(locked, method)
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
        ids = access.institution_ids(acting_user, REFERRAL_ROLES)
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
        _notify(locked, "message")
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
        if now < due:
            text = f"Reminder: a response is due by {due:%Y-%m-%d %H:%M} UTC."
            following = due
        else:
            text = f"Reminder: the response was due at {due:%Y-%m-%d %H:%M} UTC and is overdue."
            following = now + timedelta(hours=settings.REFERRAL_REMINDER_HOURS)
        ReferralMessage.objects.create(
            referral=referral, kind=ReferralMessage.Kind.REMINDER, institution=referral.to_institution, body=text
        )
        referral.reminders_sent += 1
        referral.next_reminder_at = following
        referral.save(update_fields=["reminders_sent", "next_reminder_at"])
        audit.record(
            "workflow.referral.reminder",
            actor_label=SWEEP,
            institution=referral.to_institution_id,
            object_type="workflow.referral",
            object_id=referral.pk,
            detail={"due_at": due.isoformat(), "overdue": now >= due, "reminder": referral.reminders_sent},
        )
        _notify(referral, "reminder")
    return True


def do_send_reminders(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    due = Referral.objects.filter(state=Referral.State.SENT, next_reminder_at__lte=now)
    return sum(_remind(pk, now) for pk in list(due.values_list("pk", flat=True)[:1000]))


def do_sweep_referrals(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic guarantee behind deadlines and expiries (Celery beat); safe to run twice."""
    now = now or timezone.now()
    return {"reminded": do_send_reminders(now=now), "expired_shares": sharing.do_expire_shares(now=now)}
