"""Exam registration: the procedure catalogue, modality stations, orders and MPPS.

An ``Order`` is one Requested Procedure with its one Scheduled Procedure Step
(PS3.3 C.4.10/C.4.11): what the Modality Worklist returns and what MPPS
messages and arriving images are matched to. These tables hold everything the
DICOM worklist services need besides the archive's patients and nodes, so an
edge gateway can serve the worklist from a replica of them.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from archive.models import DicomNode, Patient, Study
from pacs_cloud.models import Institution


class Procedure(models.Model):
    """One entry of an institution's procedure catalogue (Requested Procedure Code, PS3.3 C.4.11)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="procedures")
    code = models.CharField(max_length=16, help_text="Code Value of the Requested Procedure Code")
    coding_scheme = models.CharField(
        max_length=16, default="99LOCAL", help_text="Coding Scheme Designator (99… for a local catalogue)"
    )
    name = models.CharField(max_length=64, help_text="Requested Procedure Description")
    modality = models.CharField(max_length=16)
    body_part = models.CharField(max_length=16, blank=True, help_text="Body Part Examined (CS), e.g. CHEST")
    duration_minutes = models.PositiveIntegerField(default=15)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["modality", "name"]
        constraints = [models.UniqueConstraint(fields=["institution", "code"], name="procedure_unique_code")]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Station(models.Model):
    """A modality that takes scheduled steps, identified by its DICOM AE (``archive.DicomNode``)."""

    class CharacterSet(models.TextChoices):
        # Specific Character Set (0008,0005) defined terms, PS3.3 C.12.1.1.2
        AS_QUERIED = "", "As the modality's query asks (UTF-8 otherwise)"
        UTF8 = "ISO_IR 192", "Unicode UTF-8 (ISO_IR 192)"
        GB18030 = "GB18030", "Chinese GB18030"
        LATIN1 = "ISO_IR 100", "Latin-1 (ISO_IR 100)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="stations")
    node = models.OneToOneField(DicomNode, on_delete=models.PROTECT, related_name="station")
    name = models.CharField(max_length=16, help_text="Scheduled Station Name")
    modality = models.CharField(max_length=16)
    location = models.CharField(max_length=16, blank=True, help_text="Scheduled Procedure Step Location")
    character_set = models.CharField(
        max_length=16,
        blank=True,
        choices=CharacterSet.choices,
        default=CharacterSet.AS_QUERIED,
        help_text="Character set of worklist answers, for modalities that understand only one.",
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.modality}, {self.node.ae_title})"

    @property
    def ae_title(self) -> str:
        return self.node.ae_title


class Order(ConcurrentTransitionMixin, models.Model):
    """A registered exam: one Requested Procedure and its Scheduled Procedure Step."""

    class State(models.TextChoices):
        SCHEDULED = "scheduled"
        ARRIVED = "arrived"  # the patient is at the department
        IN_PROGRESS = "in_progress"  # MPPS IN PROGRESS, or images arrived
        COMPLETED = "completed"
        DISCONTINUED = "discontinued"  # MPPS DISCONTINUED: started, not finished
        CANCELLED = "cancelled"  # withdrawn before it started

    class Priority(models.TextChoices):
        ROUTINE = "routine", "Routine"
        URGENT = "urgent", "Urgent"
        STAT = "stat", "STAT"

    # States in which the order is on the Modality Worklist.
    WORKLIST_STATES = (State.SCHEDULED, State.ARRIVED, State.IN_PROGRESS)
    # States a technologist may still edit or cancel.
    OPEN_STATES = (State.SCHEDULED, State.ARRIVED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="orders")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="orders")
    procedure = models.ForeignKey(Procedure, on_delete=models.PROTECT, related_name="orders")
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="orders")
    accession_number = models.CharField(max_length=16)
    requested_procedure_id = models.CharField(max_length=16)
    sps_id = models.CharField(max_length=16, help_text="Scheduled Procedure Step ID")
    study_instance_uid = models.CharField(max_length=64, unique=True, help_text="Pre-assigned for the images")
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.ROUTINE)
    referring_physician = models.CharField(max_length=324, blank=True, help_text="DICOM PN")
    clinical_info = models.TextField(blank=True, help_text="Reason for the exam and relevant history")
    scheduled_at = models.DateTimeField()
    # The scheduled start as the institution's local DICOM date and time: what
    # the worklist's date and time keys match against (PS3.4 C.2.2.2.5).
    scheduled_date = models.DateField()
    scheduled_time = models.TimeField()
    modality = models.CharField(max_length=16)
    state = FSMField(default=State.SCHEDULED, choices=State.choices, protected=True)
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders")
    cancel_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["scheduled_at"]
        constraints = [
            models.UniqueConstraint(fields=["institution", "accession_number"], name="order_unique_accession"),
        ]
        indexes = [
            models.Index(fields=["institution", "scheduled_date", "state"]),
            models.Index(fields=["institution", "state"]),
            models.Index(fields=["institution", "patient"]),
            models.Index(fields=["institution", "updated_at"], name="order_changed_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.accession_number} {self.procedure.name}"

    @transition(field=state, source=State.SCHEDULED, target=State.ARRIVED)
    def arrive(self) -> None:
        pass

    @transition(field=state, source=[State.SCHEDULED, State.ARRIVED], target=State.IN_PROGRESS)
    def start(self) -> None:
        pass

    # From every open state too: a modality without MPPS, or a signed report,
    # completes an exam whose start nobody announced.
    @transition(field=state, source=[State.SCHEDULED, State.ARRIVED, State.IN_PROGRESS], target=State.COMPLETED)
    def complete(self) -> None:
        pass

    @transition(field=state, source=State.IN_PROGRESS, target=State.DISCONTINUED)
    def discontinue(self, cancel_reason: str = "") -> None:
        self.cancel_reason = cancel_reason

    @transition(field=state, source=[State.SCHEDULED, State.ARRIVED], target=State.CANCELLED)
    def cancel(self, cancel_reason: str = "") -> None:
        self.cancel_reason = cancel_reason


class PerformedProcedureStep(ConcurrentTransitionMixin, models.Model):
    """A Modality Performed Procedure Step instance (PS3.4 Annex F.7) as the modality reported it."""

    class State(models.TextChoices):
        # Performed Procedure Step Status (0040,0252), PS3.3 C.4.14
        IN_PROGRESS = "in_progress", "IN PROGRESS"
        COMPLETED = "completed", "COMPLETED"
        DISCONTINUED = "discontinued", "DISCONTINUED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="performed_steps")
    station_ae_title = models.CharField(max_length=16)
    pps_id = models.CharField(max_length=16, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    state = FSMField(default=State.IN_PROGRESS, choices=State.choices, protected=True)
    # The instance's attributes as the modality sent them (DICOM JSON, PS3.18 F.2).
    attributes = models.JSONField(default=dict)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"MPPS {self.sop_instance_uid} ({self.get_state_display()})"

    @transition(field=state, source=State.IN_PROGRESS, target=State.COMPLETED)
    def complete(self) -> None:
        pass

    @transition(field=state, source=State.IN_PROGRESS, target=State.DISCONTINUED)
    def discontinue(self) -> None:
        pass


class PerformedSeries(models.Model):
    """One item of a completed step's Performed Series Sequence: what the archive must hold."""

    id = models.BigAutoField(primary_key=True)
    step = models.ForeignKey(PerformedProcedureStep, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, db_index=True)
    # Referenced Image and Non-Image Composite SOP Instance UIDs of the series.
    sop_instance_uids = models.JSONField(default=list)


class ReconciliationItem(models.Model):
    """An archived study that matched no order, waiting for a technologist."""

    class Resolution(models.TextChoices):
        LINKED = "linked", "Linked to an order"
        DISMISSED = "dismissed", "No order needed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="reconciliation")
    created_at = models.DateTimeField(default=timezone.now)
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["institution", "resolved_at"])]


class IdentifierCounter(models.Model):
    """Last number issued per institution, kind (accession, patient) and period (a day, or ever)."""

    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16)
    period = models.CharField(max_length=16, blank=True)
    value = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "kind", "period"], name="identifier_counter_unique"),
        ]
