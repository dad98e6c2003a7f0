"""The archive index: patients, studies, series and instances per institution.

Every attribute QIDO-RS and C-FIND match on is a column with an index; the
rest of each instance's header is kept as DICOM JSON (PS3.18 F.2, JSONB on
PostgreSQL) for WADO-RS metadata. Text is stored as decoded Unicode whatever
the Specific Character Set it arrived in (GB18030, ISO_IR 192, ...).
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition
from guardian.managers import GroupObjectPermissionManager, UserObjectPermissionManager
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from pacs_cloud import authcache
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
    # Matching forms (archive.names): the alphabetic group upper-cased and
    # accent-free, the ideographic and phonetic groups, and every name word
    # of all groups (for fuzzy matching).
    name_search = models.CharField(max_length=324, blank=True, db_index=True)
    name_ideographic = models.CharField(max_length=324, blank=True, db_index=True)
    name_phonetic = models.CharField(max_length=324, blank=True)
    name_words = models.CharField(max_length=400, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=16, blank=True)
    # A national identifier, where a modality sent one (Other Patient IDs
    # Sequence with an issuer of NATIONAL_ID_ISSUERS); only for matching patients across hospitals.
    national_id = models.CharField(max_length=64, blank=True, db_index=True)
    # Demographics as modalities sent them before a correction, so that later
    # images still carrying the old values are recognised as this patient.
    received_forms = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "patient_id", "issuer"], name="patient_unique_id"),
        ]
        indexes = [models.Index(fields=["patient_id"])]

    def __str__(self) -> str:
        return f"{self.name or '(no name)'} [{self.patient_id}]"


# Issuers of Patient ID (0010,0021) in the Other Patient IDs Sequence (0010,1002)
# that name a national identifier: the PRC Resident Identity Card, or a generic one.
NATIONAL_ID_ISSUERS = frozenset({"CN-RIC", "NATIONAL"})


# Modalities of objects that are not images (PS3.3 C.7.3.1.1.1): the archived
# report (DOC), structured reports, key object selections, presentation states.
# The study's DICOM attributes count them; the pages count and list images.
NON_IMAGE_MODALITIES = frozenset({"DOC", "SR", "KO", "PR", "REG", "RWV", "PLAN", "RTPLAN", "RTSTRUCT"})


class Study(ConcurrentTransitionMixin, models.Model):
    class State(models.TextChoices):
        # Workflow view of an archived study (DESIGN.md, state machines).
        RECEIVING = "receiving"
        COMPLETE = "complete"
        ROUTED = "routed"
        REPORTED = "reported"
        AMENDED = "amended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # (Both keys lead composite indexes below; separate FK indexes would only slow writes.)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="studies", db_index=False)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies", db_index=False)
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    study_id = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=64, blank=True)
    referring_physician = models.CharField(max_length=324, blank=True)
    referring_physician_search = models.CharField(max_length=324, blank=True)
    modalities = models.CharField(max_length=64, blank=True, help_text="Modalities in Study, backslash-separated")
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    # Of those, the series and instances of NON_IMAGE_MODALITIES (e.g. the archived report).
    non_image_series = models.PositiveIntegerField(default=0)
    non_image_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    state = FSMField(default=State.RECEIVING, choices=State.choices, protected=True)
    received_at = models.DateTimeField(default=timezone.now)
    # Changes with every instance: deliberately in no index, so that the
    # per-instance update of the study row stays a heap-only (HOT) update.
    last_instance_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    # The Patient module exactly as the first instance carried it (DICOM
    # keywords to strings); later instances of the study must agree with it.
    received_patient = models.JSONField(default=dict, blank=True)
    # Attributes (keyword -> string) that replace the stored headers' values on
    # every retrieval after a demographics correction or a relink to another
    # patient; empty for an uncorrected study. Stored objects are never rewritten.
    header_overrides = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "studies"
        # A grant of a study as a prior of one being read: visible, read-only (archive.access).
        permissions = [("view_prior_study", "Can view as a prior of a study being read")]
        constraints = [
            models.UniqueConstraint(fields=["institution", "study_instance_uid"], name="study_unique_uid"),
        ]
        indexes = [
            models.Index(fields=["institution", "study_date"]),
            models.Index(fields=["study_instance_uid"]),
            models.Index(fields=["institution", "accession_number"]),
            # The stability sweep's candidates: few rows, and no column that
            # changes per instance.
            models.Index(fields=["institution"], condition=models.Q(state="receiving"), name="study_receiving"),
            models.Index(fields=["institution", "-study_date", "-study_time"], name="study_recent"),
            models.Index(fields=["patient", "study_date"]),
        ]

    def __str__(self) -> str:
        return f"{self.description or 'Study'} {self.study_date or ''} [{self.study_instance_uid}]"

    # What the pages show: images. DICOMweb and DIMSE answer with every object.

    @property
    def image_modalities(self) -> list[str]:
        return [m for m in self.modalities.split("\\") if m and m.upper() not in NON_IMAGE_MODALITIES]

    @property
    def image_series(self) -> int:
        return max(self.num_series - self.non_image_series, 0)

    @property
    def image_instances(self) -> int:
        return max(self.num_instances - self.non_image_instances, 0)

    @property
    def has_report_document(self) -> bool:
        """Whether a report is archived with the study as a document (Encapsulated PDF, modality DOC)."""
        return "DOC" in self.modalities.upper().split("\\")

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
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series", db_index=False)
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True, db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=64, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    performed_start_date = models.DateField(null=True, blank=True)
    performed_start_time = models.TimeField(null=True, blank=True)
    # First item of the Request Attributes Sequence (0040,0275).
    scheduled_procedure_step_id = models.CharField(max_length=16, blank=True)
    requested_procedure_id = models.CharField(max_length=16, blank=True)
    num_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(fields=["study", "series_instance_uid"], name="series_unique_uid"),
        ]
        indexes = [models.Index(fields=["series_instance_uid"]), models.Index(fields=["study", "series_number"])]

    def __str__(self) -> str:
        return f"{self.modality} {self.description or 'series'} [{self.series_instance_uid}]"


class Instance(models.Model):
    class Location(models.TextChoices):
        CACHE = "cache", "Local cache only (copy to object store pending)"
        STORED = "stored", "Object store"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Denormalised from the series' study: one SOP Instance UID per institution
    # is a database constraint, not a check that two senders could race past.
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+", db_index=False)
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances", db_index=False)
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    bits_allocated = models.PositiveIntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=1)
    size = models.BigIntegerField()
    # SHA-256 of the stored object: our File Meta Information (always the
    # same for the same SOP instance and transfer syntax) and the data set
    # exactly as sent. Equal digests are "the same bytes"; fixity checks use it.
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=400)
    location = models.CharField(max_length=16, choices=Location.choices, default=Location.CACHE)
    # Byte offset and length of the Pixel Data value in the stored object, so
    # frames are read without parsing the header; null when encapsulated
    # with undefined length or deflated.
    pixel_data_offset = models.BigIntegerField(null=True, blank=True)
    pixel_data_length = models.BigIntegerField(null=True, blank=True)
    # DICOM JSON (PS3.18 F.2) of every attribute except bulk data, for WADO-RS metadata.
    metadata = models.JSONField(default=dict)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "sop_instance_uid"], name="instance_unique_uid"),
        ]
        # Few indexes on purpose: each costs every C-STORE an insertion.
        indexes = [
            models.Index(fields=["series", "instance_number"]),
            models.Index(fields=["received_at"], condition=models.Q(location="cache"), name="instance_to_copy"),
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid


class IngestConflict(models.Model):
    """An object refused because its SOP Instance UID is archived with other bytes,
    or (``reason``) because of what it says, e.g. a birth date in the future.

    The refused object is kept aside in storage (never over the archived
    one, never indexed) until an administrator reviews it.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        KEPT_EXISTING = "kept_existing", "Kept the archived object"
        REPLACED = "replaced", "Replaced the archived object"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    instance = models.ForeignKey(Instance, null=True, on_delete=models.SET_NULL, related_name="conflicts")
    study_instance_uid = models.CharField(max_length=64)
    series_instance_uid = models.CharField(max_length=64)
    sop_instance_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=400)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    source = models.CharField(max_length=200, help_text="Who sent it: an AE title, a user, a media import.")
    # Blank for a clash with the archived object; otherwise why it was refused.
    reason = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    received_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["institution", "status", "received_at"])]


class ArchivePolicy(models.Model):
    """Per-institution archive settings; absent fields fall back to the settings module."""

    institution = models.OneToOneField(Institution, on_delete=models.CASCADE, related_name="archive_policy")
    stability_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds without a new instance after which a study is complete."
    )

    class Meta:
        verbose_name_plural = "archive policies"


# Object-level grants on studies (django-guardian direct foreign keys, so the
# access policy joins on a typed key instead of a text object_pk).


# Searches remember the caller's grants (archive.access.study_reach):
# every way of writing one clears that memo, bulk_create (which sends no
# post_save) here, saves and deletes by the receivers in apps.py.


class _StudyUserGrants(UserObjectPermissionManager):
    def bulk_create(self, *args: Any, **kwargs: Any) -> Any:
        created = super().bulk_create(*args, **kwargs)
        authcache.forget()
        return created


class _StudyGroupGrants(GroupObjectPermissionManager):
    def bulk_create(self, *args: Any, **kwargs: Any) -> Any:
        created = super().bulk_create(*args, **kwargs)
        authcache.forget()
        return created


class StudyUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)

    objects: ClassVar[_StudyUserGrants] = _StudyUserGrants()


class StudyGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)

    objects: ClassVar[_StudyGroupGrants] = _StudyGroupGrants()


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

    class Meta:
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.institution})"


# Edge gateways (the hospitals' front servers) as the cloud knows them --------------------


class EdgeGateway(models.Model):
    """An enrolled edge gateway of one institution, and the health it last reported.

    The edge acts through a service account of its own (``user``): a member
    of the institution with the technologist role, so it stores over STOW-RS
    and retrieves over WADO-RS like any sender, through the access policy.
    Its bearer token is shown once at enrolment and at each rotation.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="edge_gateways")
    name = models.CharField(max_length=100)
    user = models.OneToOneField("pacs_cloud.User", on_delete=models.PROTECT, related_name="edge_gateway")
    token = models.ForeignKey("pacs_cloud.ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The last heartbeat (what the edge says about itself).
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_address = models.CharField(max_length=64, blank=True)
    version = models.CharField(max_length=40, blank=True)
    outbox_depth = models.PositiveIntegerField(default=0)
    oldest_unsent_seconds = models.FloatField(null=True, blank=True)
    disk_free_bytes = models.BigIntegerField(null=True, blank=True)
    online_bytes = models.BigIntegerField(null=True, blank=True)
    quarantined = models.PositiveIntegerField(default=0)
    last_sync_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["institution", "name"], name="edge_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.institution})"


class EdgeQuarantine(models.Model):
    """An instance the cloud refused for good, as the edge that holds it reported it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    edge = models.ForeignKey(EdgeGateway, on_delete=models.CASCADE, related_name="quarantine")
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    sop_instance_uid = models.CharField(max_length=64)
    study_instance_uid = models.CharField(max_length=64, blank=True)
    sha256 = models.CharField(max_length=64)
    reason = models.CharField(max_length=300)
    status_code = models.PositiveIntegerField(null=True, blank=True, help_text="Failure Reason (0008,1197)")
    quarantined_at = models.DateTimeField(default=timezone.now)
    reported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-quarantined_at"]
        constraints = [
            models.UniqueConstraint(fields=["edge", "sop_instance_uid", "sha256"], name="edge_quarantine_unique")
        ]


# Storage locations, object copies and copy policies (archive.copies) ---------------------


class StorageLocation(models.Model):
    """A named place objects are kept: a file system folder or an S3 bucket, at a site, in a tier.

    The default location is the one ``STORAGE_URL`` configures, where ingest
    writes; the others receive copies (replication, lifecycle transitions).
    Every location holds an object under the same key (``object_key``).
    """

    class Kind(models.TextChoices):
        FILESYSTEM = "filesystem", "File system"
        S3 = "s3", "S3 bucket"

    class Tier(models.TextChoices):
        ONLINE = "online"
        NEARLINE = "nearline"
        # Needs a restore before a read (S3 GLACIER / DEEP_ARCHIVE).
        ARCHIVE = "archive"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=50, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # File system: the root folder. S3: the bucket, an optional key prefix and the endpoint.
    path = models.CharField(max_length=500, blank=True)
    bucket = models.CharField(max_length=63, blank=True)
    prefix = models.CharField(max_length=200, blank=True)
    endpoint_url = models.CharField(max_length=300, blank=True)
    storage_class = models.CharField(max_length=32, blank=True, help_text="S3 storage class of new objects.")
    site = models.CharField(max_length=50)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.ONLINE)
    cost_per_gb_month = models.DecimalField(max_digits=10, decimal_places=5, default=0)
    # Archive tier: how long the store takes to restore an object before it can be read
    # (S3 GLACIER Standard retrievals take 3-5 hours, DEEP_ARCHIVE up to 12).
    restore_minutes = models.PositiveIntegerField(default=300)
    # Reads try healthy locations by rank, lowest first (the fastest).
    read_rank = models.PositiveIntegerField(default=100)
    # The object store itself replicates this location's objects from another (Ceph multisite, S3
    # cross-region replication): the copier writes nothing here, it counts the store's replica once verified.
    replica_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="store_replicas",
        help_text="The location whose objects the store replicates here by itself.",
    )
    is_default = models.BooleanField(default=False)
    healthy = models.BooleanField(default=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["read_rank", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_location"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.site}, {self.tier})"


class ObjectCopy(models.Model):
    """One stored copy of an instance's object, and what the last check of it found."""

    class Status(models.TextChoices):
        GOOD = "good"
        MISSING = "missing"
        CORRUPT = "corrupt"

    id = models.BigAutoField(primary_key=True)
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="copies", db_index=False)
    location = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="copies")
    key = models.CharField(max_length=400)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    written_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.GOOD)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["instance", "location"], name="copy_unique_location")]
        indexes = [
            # The scrubber's next copies: least recently verified (or written) first.
            models.Index(Coalesce("verified_at", "written_at"), name="copy_to_verify"),
        ]

    def __str__(self) -> str:
        return f"{self.key} @ {self.location_id}"


class CopyPolicy(models.Model):
    """How many good copies an institution's objects need, at how many sites.

    An institution without one follows the platform defaults
    (``ARCHIVE_COPIES``, ``ARCHIVE_SITES``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.OneToOneField(Institution, on_delete=models.CASCADE, related_name="copy_policy")
    copies = models.PositiveSmallIntegerField(default=2)
    sites = models.PositiveSmallIntegerField(default=2)
    # Locations copies go to, in order of preference (empty: every online location).
    locations = models.ManyToManyField(StorageLocation, blank=True, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "copy policies"


class CopyAlert(models.Model):
    """An instance with fewer good copies than its policy asks, open until it has them again."""

    id = models.BigAutoField(primary_key=True)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="+")
    good_copies = models.PositiveSmallIntegerField()
    required = models.PositiveSmallIntegerField()
    raised_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["institution", "raised_at"], condition=models.Q(cleared_at=None), name="open_copy_alert"
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["instance"], condition=models.Q(cleared_at=None), name="one_open_copy_alert"
            )
        ]


class LifecycleRule(models.Model):
    """Move an institution's studies from the online default location to a cheaper one by age or idleness.

    A study qualifies when it was received at least ``min_age_days`` ago and
    (when set) nobody has read it for ``min_idle_days``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="lifecycle_rules")
    name = models.CharField(max_length=100)
    target = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="+")
    min_age_days = models.PositiveIntegerField(default=365)
    min_idle_days = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["institution", "min_age_days"]
        constraints = [models.UniqueConstraint(fields=["institution", "name"], name="lifecycle_rule_unique_name")]

    def __str__(self) -> str:
        return self.name


class StudyAccess(models.Model):
    """When a study was last read, and last recalled to the online tier (lifecycle rules read both).

    While objects of the study are being restored from the archive tier,
    ``restore_requested_at`` says since when and ``restore_ready_by`` when the
    store expects them readable (what readers are told to wait for).
    """

    study = models.OneToOneField(Study, primary_key=True, on_delete=models.CASCADE, related_name="access_record")
    last_read_at = models.DateTimeField(default=timezone.now)
    recalled_at = models.DateTimeField(null=True, blank=True)
    restore_requested_at = models.DateTimeField(null=True, blank=True)
    restore_ready_by = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["restore_requested_at"],
                condition=models.Q(restore_requested_at__isnull=False),
                name="study_restore_pending",
            )
        ]


# Break-glass tables live in archive.breakglass.models but belong to this app.
from .breakglass.models import BreakGlassAccess, BreakGlassAllowance  # noqa: E402, F401

# Sub-packages' models, so that Django registers them with this app.
from .priors.models import PriorRule  # noqa: E402, F401
