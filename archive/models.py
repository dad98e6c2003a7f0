"""The archive index: patients, studies, series and instances per institution."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from pacs_cloud.models import Institution


class Patient(models.Model):
    """A patient as known at one institution (Patient ID + Issuer of Patient ID)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="patients")
    patient_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True)
    # Patient's Name as the DICOM PN string, decoded to Unicode with all its
    # component groups (alphabetic=ideographic=phonetic).
    name = models.CharField(max_length=324, blank=True)
    # Upper-cased, accent-free alphabetic and phonetic forms for matching.
    name_search = models.CharField(max_length=324, blank=True, db_index=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "patient_id", "issuer"], name="patient_unique_id"),
        ]

    def __str__(self) -> str:
        return f"{self.name or '(no name)'} [{self.patient_id}]"


class Study(ConcurrentTransitionMixin, models.Model):
    class State(models.TextChoices):
        # Workflow view of an archived study (DESIGN.md, state machines).
        RECEIVING = "receiving"
        COMPLETE = "complete"
        ROUTED = "routed"
        REPORTED = "reported"
        AMENDED = "amended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="studies")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    study_id = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=64, blank=True)
    referring_physician = models.CharField(max_length=324, blank=True)
    modalities = models.CharField(max_length=64, blank=True, help_text="Modalities in Study, backslash-separated")
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    state = FSMField(default=State.RECEIVING, choices=State.choices, protected=True)
    received_at = models.DateTimeField(default=timezone.now)
    last_instance_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(fields=["institution", "study_instance_uid"], name="study_unique_uid"),
        ]
        indexes = [
            models.Index(fields=["institution", "study_date"]),
            models.Index(fields=["study_instance_uid"]),
            models.Index(fields=["institution", "accession_number"]),
            models.Index(fields=["state", "last_instance_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.description or 'Study'} {self.study_date or ''} [{self.study_instance_uid}]"

    @transition(field=state, source=State.RECEIVING, target=State.COMPLETE)
    def complete(self) -> None:
        self.completed_at = timezone.now()

    @transition(field=state, source=[State.COMPLETE, State.ROUTED], target=State.RECEIVING)
    def reopen(self) -> None:
        """A late instance arrived after completion."""
        self.completed_at = None

    @transition(field=state, source=State.COMPLETE, target=State.ROUTED)
    def route(self) -> None:
        pass

    @transition(field=state, source=[State.COMPLETE, State.ROUTED], target=State.REPORTED)
    def report(self) -> None:
        pass

    @transition(field=state, source=[State.REPORTED, State.AMENDED], target=State.AMENDED)
    def amend(self) -> None:
        pass


class Series(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True, db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=64, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    num_instances = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(fields=["study", "series_instance_uid"], name="series_unique_uid"),
        ]
        indexes = [models.Index(fields=["series_instance_uid"])]


class Instance(models.Model):
    class Location(models.TextChoices):
        CACHE = "cache", "Local cache only (copy to object store pending)"
        STORED = "stored", "Object store"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=1)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=400)
    location = models.CharField(max_length=16, choices=Location.choices, default=Location.CACHE)
    # DICOM JSON (PS3.18 F.2) of every attribute except bulk data, for WADO-RS metadata.
    metadata = models.JSONField(default=dict)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "sop_instance_uid"], name="instance_unique_uid"),
        ]
        indexes = [
            models.Index(fields=["sop_instance_uid"]),
            models.Index(fields=["series", "instance_number"]),
        ]


# Object-level grants on studies (django-guardian direct foreign keys, so the
# access policy joins on a typed key instead of a text object_pk).


class StudyUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class StudyGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class DicomNode(models.Model):
    """A remote DICOM application entity (modality, PACS, workstation) of one institution.

    Only configured nodes may associate with our DICOM services; the calling
    AE title (and, when set, the peer's address) decides the institution.
    ``port`` is where C-MOVE sends images to this node.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="dicom_nodes")
    ae_title = models.CharField(max_length=16, unique=True)
    host = models.CharField(max_length=255, blank=True, help_text="Allowed peer address; blank accepts any.")
    port = models.PositiveIntegerField(null=True, blank=True)
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.institution})"
