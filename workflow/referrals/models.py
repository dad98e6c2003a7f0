"""Referrals between hospitals, the shares of studies they and second opinions imply, and imported copies.

The tables belong to the ``workflow`` app (``app_label``), as they always
have; ``workflow.models`` imports these classes so that Django finds them.
Transition methods change only their own row; ``workflow.referrals.actions``
does the grants, audit and pushes around them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from pacs_cloud.models import Institution

# The author shown for the reminders the deadline sweep writes into a referral's timeline.
REFERRAL_SWEEP = "referral deadline sweep"


class Referral(ConcurrentTransitionMixin, models.Model):
    """A patient sent from one hospital to another (upward to a tertiary hospital, or back down).

    While it is sent, accepted or in care, its attached studies are shared
    with the receiving institution (:class:`StudyShare`); returning keeps the
    share until the sender closes the referral. Transition methods change only
    this row; ``workflow.referrals.actions`` does the grants, audit and pushes.
    """

    class State(models.TextChoices):
        DRAFT = "draft"
        SENT = "sent"
        ACCEPTED = "accepted"
        DECLINED = "declined"
        IN_CARE = "in_care", "In care"
        RETURNED = "returned"  # the downward referral back, with discharge summary and follow-up plan
        CLOSED = "closed"
        CANCELLED = "cancelled"

    class Direction(models.TextChoices):
        UPWARD = "upward", "Upward (to a higher level of care)"
        DOWNWARD = "downward", "Downward (back to a local hospital)"

    class Urgency(models.TextChoices):
        EMERGENCY = "emergency"
        URGENT = "urgent"
        ROUTINE = "routine"

    class ConsentMethod(models.TextChoices):
        WRITTEN = "written", "Written consent"
        VERBAL = "verbal", "Verbal consent, witnessed"
        REPRESENTATIVE = "representative", "Consent of a legal representative"
        EMERGENCY = "emergency", "Emergency: consent not obtainable"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey("archive.Patient", on_delete=models.PROTECT, related_name="referrals")
    from_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="referrals_sent")
    to_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="referrals_received")
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.UPWARD)
    urgency = models.CharField(max_length=10, choices=Urgency.choices, default=Urgency.ROUTINE)
    reason = models.CharField(max_length=500)
    clinical_summary = models.TextField(blank=True)
    state = FSMField(default=State.DRAFT, choices=State.choices, protected=True)
    # Consent for the transfer of the patient's records (recorded before sending).
    consent_method = models.CharField(max_length=16, choices=ConsentMethod.choices, blank=True)
    consent_note = models.CharField(max_length=500, blank=True)
    consent_recorded_at = models.DateTimeField(null=True, blank=True)
    consent_recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Until when the receiving institution may see the studies; none: until the referral ends.
    share_until = models.DateTimeField(null=True, blank=True)
    # The response deadline and its reminders.
    response_due_at = models.DateTimeField(null=True, blank=True)
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveSmallIntegerField(default=0)
    decline_reason = models.TextField(blank=True)
    discharge_summary = models.TextField(blank=True)
    follow_up_plan = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    responded_at = models.DateTimeField(null=True, blank=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "workflow"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["from_institution", "state", "created_at"], name="referral_outbox"),
            models.Index(fields=["to_institution", "state", "created_at"], name="referral_inbox"),
            models.Index(fields=["next_reminder_at"], condition=Q(state="sent"), name="referral_reminder_due"),
        ]

    def __str__(self) -> str:
        return f"Referral {self.from_institution} → {self.to_institution} ({self.state})"

    @transition(field=state, source=State.DRAFT, target=State.SENT)
    def send(self, *, now: datetime, response_due_at: datetime, next_reminder_at: datetime) -> None:
        self.sent_at = now
        self.response_due_at = response_due_at
        self.next_reminder_at = next_reminder_at

    @transition(field=state, source=State.SENT, target=State.ACCEPTED)
    def accept(self, *, now: datetime) -> None:
        self.responded_at = now
        self.next_reminder_at = None

    @transition(field=state, source=State.SENT, target=State.DECLINED)
    def decline(self, *, now: datetime, decline_reason: str) -> None:
        self.responded_at = now
        self.ended_at = now
        self.decline_reason = decline_reason
        self.next_reminder_at = None

    @transition(field=state, source=State.ACCEPTED, target=State.IN_CARE)
    def admit(self, *, now: datetime) -> None:
        pass

    @transition(field=state, source=State.IN_CARE, target=State.RETURNED)
    def return_to_sender(self, *, now: datetime, discharge_summary: str, follow_up_plan: str) -> None:
        self.returned_at = now
        self.discharge_summary = discharge_summary
        self.follow_up_plan = follow_up_plan

    @transition(field=state, source=State.RETURNED, target=State.CLOSED)
    def close(self, *, now: datetime) -> None:
        self.ended_at = now

    @transition(field=state, source=[State.DRAFT, State.SENT, State.ACCEPTED], target=State.CANCELLED)
    def cancel(self, *, now: datetime) -> None:
        self.ended_at = now
        self.next_reminder_at = None


# While a referral is in one of these states its studies are shared with the receiver.
REFERRAL_SHARING_STATES = (
    Referral.State.SENT,
    Referral.State.ACCEPTED,
    Referral.State.IN_CARE,
    Referral.State.RETURNED,
)
REFERRAL_ENDED_STATES = (Referral.State.DECLINED, Referral.State.CLOSED, Referral.State.CANCELLED)
# Not yet ended (a draft included): what the referral lists and the home panel show by default.
REFERRAL_OPEN_STATES = tuple(s for s in Referral.State if s not in REFERRAL_ENDED_STATES)


class ReferralStudy(models.Model):
    """A study attached to a referral (its reports travel with it: a report is seen with its study)."""

    id = models.BigAutoField(primary_key=True)
    referral = models.ForeignKey(Referral, on_delete=models.CASCADE, related_name="attachments")
    study = models.ForeignKey("archive.Study", on_delete=models.PROTECT, related_name="referral_attachments")
    attached_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    attached_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "workflow"
        ordering = ["attached_at", "id"]
        constraints = [models.UniqueConstraint(fields=["referral", "study"], name="referral_study_unique")]


class ReferralMessage(models.Model):
    """One message between the two teams, or a reminder the deadline sweep wrote."""

    class Kind(models.TextChoices):
        MESSAGE = "message"
        REMINDER = "reminder"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    referral = models.ForeignKey(Referral, on_delete=models.CASCADE, related_name="messages")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.MESSAGE)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    institution = models.ForeignKey(Institution, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "workflow"
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["referral", "created_at"])]


class StudyShare(models.Model):
    """One institution may see one study, because of a referral or a second-opinion request.

    The guardian grant (``archive.view_study`` for the institution's
    clinicians', radiologists' and coordinators' groups) exists exactly while
    at least one active share of the study with the institution does;
    ``workflow.referrals.actions`` keeps the two in step. Rows are never deleted: a
    revoked share keeps who, when and why.
    """

    class Kind(models.TextChoices):
        REFERRAL = "referral"
        SECOND_OPINION = "second_opinion", "Second opinion"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="shares")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="shared_studies")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    referral = models.ForeignKey(Referral, null=True, blank=True, on_delete=models.CASCADE, related_name="shares")
    reason = models.CharField(max_length=500, blank=True)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    granted_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        app_label = "workflow"
        ordering = ["-granted_at"]
        indexes = [
            models.Index(fields=["study", "institution"], condition=Q(revoked_at__isnull=True), name="share_active"),
            models.Index(fields=["expires_at"], condition=Q(revoked_at__isnull=True), name="share_expiry"),
        ]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ImportedStudy(models.Model):
    """A shared study copied into the receiving institution's archive under its own patient."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source_study = models.ForeignKey("archive.Study", on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("archive.Study", on_delete=models.PROTECT, related_name="imported_from")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey("archive.Patient", on_delete=models.PROTECT, related_name="+")
    share = models.ForeignKey(StudyShare, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    instances = models.PositiveIntegerField(default=0)
    imported_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    imported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "workflow"
        ordering = ["-imported_at"]
