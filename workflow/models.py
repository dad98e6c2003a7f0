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


TASK_OPEN_STATES = (
    ReadingTask.State.OFFERED,
    ReadingTask.State.RELEASED,
    ReadingTask.State.ESCALATED,
    ReadingTask.State.REASSIGNED,
)
HELD_STATES = (ReadingTask.State.CLAIMED, ReadingTask.State.DRAFTING, ReadingTask.State.PRELIMINARY)
# Held states that count against a reader's concurrent-claim cap.
CAPPED_STATES = (ReadingTask.State.CLAIMED, ReadingTask.State.DRAFTING)
TASK_ENDED_STATES = (ReadingTask.State.FINAL, ReadingTask.State.CANCELLED)


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


# The referral part's models live in workflow.referrals.models but belong to
# this app (its tables, its migrations): importing them here is how Django
# finds them. Code that uses them imports them from there.
from .referrals.models import ImportedStudy, Referral, ReferralMessage, ReferralStudy, StudyShare  # noqa: E402, F401


class TaskPrior(models.Model):
    """A relevant prior granted, read-only, to the holder of a reading task with the task's study.

    Chosen by ``archive.priors`` when the task is claimed; the grant lasts as
    long as the task's own (taken back with it unless another task of the
    holder still lists the same prior).
    """

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(ReadingTask, on_delete=models.CASCADE, related_name="priors")
    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "study"], name="task_prior_unique")]
        indexes = [models.Index(fields=["study"], name="task_prior_study")]


# The statistics' summary rows (workflow.statistics.models), found the same way.
# One patient across hospitals (workflow.links): found here by Django, like the referrals'.
from .links.models import LinkSuggestion, PatientConsent, PatientLink  # noqa: E402, F401
from .statistics.models import EdgeBacklogSample, StaleRollupDay, StatRollup, StudyStat  # noqa: E402, F401
