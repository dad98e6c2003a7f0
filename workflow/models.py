"""Pools, agreements, routing policies, process instances and reading tasks.

A hospital's finished study starts a :class:`ProcessInstance` pinned to the
hospital's current :class:`RoutingPolicy` version. The instance holds one
:class:`ReadingTask` per read (two plus a reconciliation step for double
reading); each task is offered to recipients (:class:`TaskOffer`: the
hospital's own radiologists, a pool, a person) until one radiologist claims it.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from pacs_cloud.models import Institution


class Priority(models.TextChoices):
    # Ordered most urgent first; RANK below sorts worklists by it.
    STAT = "stat", "STAT"
    URGENT = "urgent", "Urgent"
    ROUTINE = "routine", "Routine"


PRIORITY_RANK: dict[str, int] = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


def normalise_priority(value: object) -> str:
    """Map order and DICOM priorities to ours.

    DICOM Requested Procedure Priority (0040,1003) is STAT, HIGH, ROUTINE,
    MEDIUM or LOW; HL7 v2 ORC-7 uses S (stat), A (ASAP), R (routine).
    """
    text = str(getattr(value, "value", value) or "").strip().lower()
    if text in {"stat", "s", "emergency", "critical"}:
        return Priority.STAT
    if text in {"urgent", "high", "asap", "a", "u"}:
        return Priority.URGENT
    return Priority.ROUTINE


class RadiologistPool(models.Model):
    """Radiologists who read together for several hospitals (a reading centre's team)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="owned_pools")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    claim_cap = models.PositiveSmallIntegerField(
        default=5, help_text="Default number of tasks a member may hold at once."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="pool_unique_name")]

    def __str__(self) -> str:
        return self.name


class PoolMember(models.Model):
    """One radiologist in a pool, the hospitals they are credentialled for and their cap."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pool = models.ForeignKey(RadiologistPool, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pool_memberships")
    subspecialties = models.JSONField(default=list, blank=True, help_text='e.g. ["neuro", "msk", "breast"]')
    credentialed_for = models.ManyToManyField(
        Institution, related_name="credentialed_readers", blank=True, help_text="Hospitals this member may read for."
    )
    claim_cap = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Overrides the pool's cap.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "user"], name="pool_member_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.pool}"

    @property
    def effective_cap(self) -> int:
        return self.claim_cap if self.claim_cap is not None else self.pool.claim_cap


class ReadingAgreement(models.Model):
    """A hospital sends (some of) its studies to a pool under SLA terms per priority."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hospital = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="reading_agreements")
    pool = models.ForeignKey(RadiologistPool, on_delete=models.PROTECT, related_name="agreements")
    modalities = models.JSONField(default=list, blank=True, help_text="Modalities covered; empty covers all.")
    body_parts = models.JSONField(default=list, blank=True, help_text="Body parts covered; empty covers all.")
    sla_minutes = models.JSONField(default=dict, blank=True, help_text='Minutes per priority, e.g. {"stat": 60}.')
    valid_from = models.DateField(default=timezone.localdate)
    valid_until = models.DateField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["hospital__name", "pool__name"]
        constraints = [models.UniqueConstraint(fields=["hospital", "pool"], name="agreement_unique_pair")]

    def __str__(self) -> str:
        return f"{self.hospital} → {self.pool}"

    def in_force(self, day: date | None = None) -> bool:
        day = day or timezone.localdate()
        return (
            self.is_active
            and self.pool.is_active
            and self.valid_from <= day
            and (self.valid_until is None or day <= self.valid_until)
        )

    def covers(self, modality: str, body_part: str) -> bool:
        mods = {m.upper() for m in self.modalities}
        parts = {p.upper() for p in self.body_parts}
        return (not mods or modality.upper() in mods) and (not parts or body_part.upper() in parts)


class RoutingPolicy(models.Model):
    """One immutable version of a hospital's process definition (see ``workflow.policy``).

    Editing a policy saves a new version; running process instances keep the
    version they started with.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="routing_policies")
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=200, default="Routing policy")
    definition = models.JSONField(help_text="Rules, SLAs and fallback; validated by workflow.policy.")
    note = models.CharField(max_length=500, blank=True, help_text="What changed in this version.")
    is_current = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["institution", "-version"]
        verbose_name_plural = "routing policies"
        constraints = [
            models.UniqueConstraint(fields=["institution", "version"], name="policy_unique_version"),
            models.UniqueConstraint(fields=["institution"], condition=Q(is_current=True), name="policy_one_current"),
        ]

    def __str__(self) -> str:
        return f"{self.institution} policy v{self.version}"


class ProcessInstance(models.Model):
    """The reading process of one study, pinned to the policy version it started with."""

    class State(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="reading_processes")
    policy = models.ForeignKey(RoutingPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rule_index = models.IntegerField(null=True, blank=True, help_text="Matched rule; None for the fallback.")
    rule_name = models.CharField(max_length=200, blank=True)
    plan = models.JSONField(default=dict, help_text="The resolved path: targets, SLA and escalation chain.")
    facts = models.JSONField(default=dict, help_text="The study and order facts the rules were matched on.")
    order_id = models.CharField(max_length=64, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One live process per study, so a study completed twice (or by two
            # workers at once) is routed once.
            models.UniqueConstraint(
                fields=["study"], condition=~Q(state="cancelled"), name="process_one_live_per_study"
            ),
        ]


_OPEN = Q(state__in=["offered", "released", "escalated", "reassigned"])


class ReadingTask(ConcurrentTransitionMixin, models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        OFFERED = "offered"
        CLAIMED = "claimed"
        DRAFTING = "drafting"
        PRELIMINARY = "preliminary"
        FINAL = "final"
        RELEASED = "released"  # given back by its holder; open again
        ESCALATED = "escalated"  # SLA breached; open to the next target
        REASSIGNED = "reassigned"  # offered by an administrator to one named radiologist
        CANCELLED = "cancelled"

    class Kind(models.TextChoices):
        READ = "read", "Read"
        SECOND_READ = "second_read", "Second read"
        RECONCILIATION = "reconciliation", "Reconciliation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    process = models.ForeignKey(ProcessInstance, on_delete=models.CASCADE, related_name="tasks")
    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="reading_tasks")
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="+", help_text="The hospital the study belongs to."
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.READ)
    state = FSMField(default=State.PENDING, choices=State.choices, protected=True)
    # What a reader needs to choose the task, copied so the worklist needs no
    # join (and no PHI) to filter and sort.
    hospital_name = models.CharField(max_length=200, blank=True)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.ROUTINE)
    priority_rank = models.PositiveSmallIntegerField(default=2)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    procedure_code = models.CharField(max_length=64, blank=True)
    procedure = models.CharField(max_length=200, blank=True)
    clinical_question = models.TextField(blank=True)
    # SLA and escalation.
    sla_minutes = models.PositiveIntegerField(default=1440)
    offered_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    final_level = models.PositiveSmallIntegerField(default=0, help_text="Last level of the escalation chain.")
    breached_at = models.DateTimeField(null=True, blank=True)
    # The holder.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="claimed_tasks"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["priority_rank", "due_at"]
        indexes = [
            # The worklist walks open tasks in the order it shows them, so the
            # first page never sorts the whole open set.
            models.Index(fields=["priority_rank", "due_at"], condition=_OPEN, name="task_open_order"),
            models.Index(fields=["due_at"], condition=_OPEN, name="task_open_sla"),
            models.Index(
                fields=["institution", "priority_rank", "due_at"], condition=_OPEN, name="task_open_hospital_id"
            ),
            models.Index(
                fields=["hospital_name", "priority_rank", "due_at"], condition=_OPEN, name="task_open_hospital"
            ),
            models.Index(fields=["modality", "priority_rank", "due_at"], condition=_OPEN, name="task_open_modality"),
            models.Index(fields=["state", "due_at"], name="task_state_due"),
            models.Index(fields=["claimed_by", "state"], name="task_holder"),
            models.Index(fields=["study", "state"], name="task_study"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.modality} {self.body_part} ({self.state})"

    # Transition methods change only this row (django-fsm-2's advice); actions
    # do the I/O around them.

    @transition(field=state, source=State.PENDING, target=State.OFFERED)
    def offer(self, *, now: datetime, sla_minutes: int) -> None:
        self.offered_at = now
        self.sla_minutes = sla_minutes
        self.due_at = now + timedelta(minutes=sla_minutes)

    @transition(
        field=state, source=[State.OFFERED, State.RELEASED, State.ESCALATED, State.REASSIGNED], target=State.CLAIMED
    )
    def claim(self, *, user: Any, now: datetime) -> None:
        self.claimed_by = user
        self.claimed_at = now
        self.last_activity_at = now

    @transition(field=state, source=[State.CLAIMED, State.DRAFTING], target=State.RELEASED)
    def release(self) -> None:
        self._drop_holder()

    @transition(field=state, source=State.CLAIMED, target=State.RELEASED)
    def expire(self) -> None:
        """An idle claim goes back to the recipients it was offered to."""
        self._drop_holder()

    @transition(field=state, source=State.CLAIMED, target=State.DRAFTING)
    def start_draft(self, *, now: datetime) -> None:
        self.last_activity_at = now

    @transition(field=state, source=[State.CLAIMED, State.DRAFTING], target=State.PRELIMINARY)
    def issue_preliminary(self, *, now: datetime) -> None:
        self.last_activity_at = now

    @transition(field=state, source=[State.CLAIMED, State.DRAFTING, State.PRELIMINARY], target=State.FINAL)
    def finalize(self, *, now: datetime) -> None:
        self.last_activity_at = now
        self.finished_at = now

    @transition(
        field=state,
        source=[State.OFFERED, State.RELEASED, State.ESCALATED, State.REASSIGNED],
        target=State.ESCALATED,
    )
    def escalate(self, *, now: datetime, level: int, sla_minutes: int) -> None:
        self.breached_at = self.breached_at or now
        self.escalation_level = level
        self.sla_minutes = sla_minutes
        self.offered_at = now
        self.due_at = now + timedelta(minutes=sla_minutes)

    @transition(
        field=state,
        source=[State.OFFERED, State.RELEASED, State.ESCALATED, State.REASSIGNED, State.CLAIMED, State.DRAFTING],
        target=State.REASSIGNED,
    )
    def reassign(self, *, now: datetime) -> None:
        self._drop_holder()
        self.offered_at = now

    @transition(
        field=state,
        source=[
            State.PENDING,
            State.OFFERED,
            State.CLAIMED,
            State.DRAFTING,
            State.PRELIMINARY,
            State.RELEASED,
            State.ESCALATED,
            State.REASSIGNED,
        ],
        target=State.CANCELLED,
    )
    def cancel(self, *, now: datetime) -> None:
        self._drop_holder()
        self.finished_at = now

    def _drop_holder(self) -> None:
        self.claimed_by = None
        self.claimed_at = None
        self.last_activity_at = None


OPEN_STATES = (
    ReadingTask.State.OFFERED,
    ReadingTask.State.RELEASED,
    ReadingTask.State.ESCALATED,
    ReadingTask.State.REASSIGNED,
)
HELD_STATES = (ReadingTask.State.CLAIMED, ReadingTask.State.DRAFTING, ReadingTask.State.PRELIMINARY)
# Held states that count against a reader's concurrent-claim cap.
CAPPED_STATES = (ReadingTask.State.CLAIMED, ReadingTask.State.DRAFTING)
ENDED_STATES = (ReadingTask.State.FINAL, ReadingTask.State.CANCELLED)


class TaskOffer(models.Model):
    """One recipient of a task at one escalation level; open while ``is_active``.

    ``hospital`` repeats the task's institution so the worklist query can match
    a pool member's per-hospital credentials without joining the task.
    """

    class Kind(models.TextChoices):
        OWN = "own", "The hospital's own radiologists"
        POOL = "pool", "A radiologist pool"
        PERSON = "person", "A named radiologist"

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(ReadingTask, on_delete=models.CASCADE, related_name="offers")
    hospital = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    pool = models.ForeignKey(RadiologistPool, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    subspecialty = models.CharField(max_length=32, blank=True, help_text="Only pool members with it.")
    level = models.PositiveSmallIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["pool", "hospital"], condition=Q(is_active=True), name="offer_active_pool"),
            models.Index(fields=["hospital", "kind"], condition=Q(is_active=True), name="offer_active_own"),
            models.Index(fields=["user"], condition=Q(is_active=True), name="offer_active_person"),
            models.Index(fields=["task", "is_active"], name="offer_task"),
        ]


# Referrals and sharing ---------------------------------------------------------


class Referral(ConcurrentTransitionMixin, models.Model):
    """A patient sent from one hospital to another (upward to a tertiary hospital, or back down).

    While it is sent, accepted or in care, its attached studies are shared
    with the receiving institution (:class:`StudyShare`); returning keeps the
    share until the sender closes the referral. Transition methods change only
    this row; ``workflow.referrals`` does the grants, audit and pushes.
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


class ReferralStudy(models.Model):
    """A study attached to a referral (its reports travel with it: a report is seen with its study)."""

    id = models.BigAutoField(primary_key=True)
    referral = models.ForeignKey(Referral, on_delete=models.CASCADE, related_name="attachments")
    study = models.ForeignKey("archive.Study", on_delete=models.PROTECT, related_name="referral_attachments")
    attached_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    attached_at = models.DateTimeField(default=timezone.now)

    class Meta:
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
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["referral", "created_at"])]


class StudyShare(models.Model):
    """One institution may see one study, because of a referral or a second-opinion request.

    The guardian grant (``archive.view_study`` for the institution's
    clinicians', radiologists' and coordinators' groups) exists exactly while
    at least one active share of the study with the institution does;
    ``workflow.sharing`` keeps the two in step. Rows are never deleted: a
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
        ordering = ["-imported_at"]
