"""Report templates, reports, their signed versions, signing keys, critical results and the HL7 outbox.

A :class:`Report` is the working object of one read: its state machine
(draft → preliminary → final → amended) and the draft being typed, autosaved
as numbered revisions (:class:`DraftRevision`, append-only) so no typing is
ever lost. What a radiologist signs becomes a :class:`ReportVersion`:
immutable (the model refuses updates and deletes, and on PostgreSQL a trigger
refuses them too), carrying the canonical bytes that were signed, the Ed25519
signature and the key that made it. A final report's content is its signed
versions; an addendum or amendment adds a version and never touches the
earlier ones.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from pacs_cloud.models import Institution

SECTIONS = ("technique", "findings", "impression")


def empty_content() -> dict[str, Any]:
    return {"technique": "", "findings": "", "impression": "", "addendum": "", "key_images": []}


class ReportTemplate(models.Model):
    """A structured template of one institution, optionally for one procedure or modality."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="report_templates")
    name = models.CharField(max_length=200)
    modality = models.CharField(max_length=16, blank=True, help_text="Empty: any modality.")
    procedure_code = models.CharField(max_length=64, blank=True, help_text="Empty: any procedure.")
    body_part = models.CharField(max_length=64, blank=True, help_text="Empty: any body part.")
    sections = models.JSONField(default=dict, help_text="Starting text per section: technique, findings, impression.")
    macros = models.JSONField(
        default=list, blank=True, help_text='Normal-report macros: [{"name": ..., "section": ..., "text": ...}]'
    )
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["institution", "name"], name="report_template_unique_name")]

    def __str__(self) -> str:
        return self.name

    def specificity(self) -> int:
        """How narrowly the template applies: the most specific match is offered first."""
        return bool(self.procedure_code) * 4 + bool(self.body_part) * 2 + bool(self.modality)


class SigningKey(models.Model):
    """A radiologist's Ed25519 key. The private half is stored encrypted (AES-GCM, see ``reports.signing``).

    A key is never deleted: versions it signed keep verifying after it is retired.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signing_keys")
    public_key = models.BinaryField(help_text="Raw 32-byte Ed25519 public key.")
    encrypted_private_key = models.BinaryField(help_text="Nonce + AES-GCM ciphertext of the raw private key.")
    fingerprint = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the public key, hex.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user"], condition=Q(is_active=True), name="signing_key_one_active"),
        ]

    def __str__(self) -> str:
        return f"key {self.fingerprint[:16]} of {self.user}"


_FINAL_STATES = ("final", "amended")


class Report(ConcurrentTransitionMixin, models.Model):
    class State(models.TextChoices):
        DRAFT = "draft"
        PRELIMINARY = "preliminary"
        FINAL = "final"
        AMENDED = "amended"

    class DraftKind(models.TextChoices):
        NONE = "", "No open draft"
        REPORT = "report", "Report"
        ADDENDUM = "addendum", "Addendum"
        AMENDMENT = "amendment", "Amendment"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="reports", help_text="The study's hospital."
    )
    study = models.ForeignKey("archive.Study", on_delete=models.PROTECT, related_name="reports")
    reading_task = models.ForeignKey(
        "workflow.ReadingTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    template = models.ForeignKey(ReportTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authored_reports")
    state = FSMField(default=State.DRAFT, choices=State.choices, protected=True)
    # The draft being typed: sections, the addendum text and chosen key images.
    draft = models.JSONField(default=empty_content)
    draft_kind = models.CharField(max_length=16, choices=DraftKind.choices, default=DraftKind.REPORT, blank=True)
    draft_revision = models.PositiveIntegerField(default=0)
    draft_saved_at = models.DateTimeField(null=True, blank=True)
    # Copied from the study (and its latest signed version) so the clinicians'
    # lookup filters one table with no join.
    patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_name_search = models.CharField(max_length=324, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)
    modality = models.CharField(max_length=64, blank=True)
    description = models.CharField(max_length=200, blank=True)
    is_critical = models.BooleanField(default=False)
    signed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-study_date", "-created_at"]
        indexes = [
            models.Index(fields=["institution", "-study_date", "-created_at"], name="report_lookup_date"),
            models.Index(fields=["institution", "patient_id"], name="report_lookup_pid"),
            models.Index(fields=["institution", "accession_number"], name="report_lookup_acc"),
            models.Index(fields=["institution", "patient_name_search"], name="report_lookup_name"),
            models.Index(fields=["study"], name="report_study"),
        ]

    def __str__(self) -> str:
        return f"Report {self.accession_number or self.pk} ({self.state})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refuses a changed draft on a final report with no addendum or amendment open.

        The guard holds for every caller (admin, shell, a future view), not
        only the API, which refuses first with a readable message.
        """
        loaded = getattr(self, "_loaded_draft", None)
        if (
            self.state in _FINAL_STATES
            and self.draft_kind not in (self.DraftKind.ADDENDUM, self.DraftKind.AMENDMENT)
            and loaded is not None
            and self.draft != loaded
        ):
            raise FinalReportError("A final report cannot be changed; write an addendum or an amendment.")
        super().save(*args, **kwargs)
        self._loaded_draft = self.draft

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any, **kwargs: Any) -> Report:
        row = super().from_db(db, field_names, values, **kwargs)
        row._loaded_draft = row.__dict__.get("draft")
        return row

    # Transition methods change only this row (django-fsm-2's advice).

    @transition(field=state, source=[State.DRAFT], target=State.PRELIMINARY)
    def issue_preliminary(self, *, now: Any) -> None:
        self.updated_at = now

    @transition(field=state, source=[State.DRAFT, State.PRELIMINARY], target=State.FINAL)
    def sign_final(self, *, now: Any) -> None:
        self.signed_at = now
        self.updated_at = now
        self.draft_kind = self.DraftKind.NONE

    @transition(field=state, source=[State.FINAL, State.AMENDED], target=State.AMENDED)
    def amend(self, *, now: Any) -> None:
        self.signed_at = now
        self.updated_at = now
        self.draft_kind = self.DraftKind.NONE


class FinalReportError(Exception):
    """A change to the content of a final report was attempted."""


class DraftRevision(models.Model):
    """One autosave of a draft: append-only, so every state the typing passed through can be recovered."""

    id = models.BigAutoField(primary_key=True)
    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="revisions")
    revision = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, default="report")
    content = models.JSONField()
    saved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    saved_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["report", "revision"]
        constraints = [models.UniqueConstraint(fields=["report", "revision"], name="draft_revision_unique")]


class ImmutableError(Exception):
    """A signed version was about to be changed or deleted."""


class ReportVersion(models.Model):
    """One signed version of a report: immutable once written."""

    class Kind(models.TextChoices):
        PRELIMINARY = "preliminary"
        FINAL = "final"
        ADDENDUM = "addendum"
        AMENDMENT = "amendment"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    content = models.JSONField(help_text="Sections and addendum text as signed.")
    key_images = models.JSONField(default=list, help_text="Key images as signed: UIDs, frame, SHA-256, note.")
    signer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signer_name = models.CharField(max_length=200)
    signing_key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="versions")
    signed_at = models.DateTimeField()
    previous_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the previous version's form.")
    canonical = models.BinaryField(help_text="The exact bytes that were signed.")
    canonical_sha256 = models.CharField(max_length=64)
    signature = models.BinaryField(help_text="Ed25519 signature of ``canonical``.")
    verification_code = models.CharField(max_length=32, unique=True)
    is_critical = models.BooleanField(default=False)
    dicom_sop_instance_uid = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["report", "number"]
        constraints = [models.UniqueConstraint(fields=["report", "number"], name="report_version_unique")]

    def __str__(self) -> str:
        return f"version {self.number} ({self.kind}) of {self.report_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableError("A signed report version cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableError("A signed report version cannot be deleted.")


class ReportExport(models.Model):
    """Where a signed version went: the archive (DICOM Encapsulated PDF) and the HL7 interface.

    Kept apart from the immutable version; each row is also the outbox the
    export sweep retries from.
    """

    class Target(models.TextChoices):
        DICOM = "dicom", "DICOM Encapsulated PDF in the archive"
        HL7 = "hl7", "HL7 v2 ORU^R01"

    class State(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"  # gave up after the configured attempts

    id = models.BigAutoField(primary_key=True)
    version = models.ForeignKey(ReportVersion, on_delete=models.PROTECT, related_name="exports")
    target = models.CharField(max_length=8, choices=Target.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    result = models.CharField(max_length=200, blank=True, help_text="SOP Instance UID, or the ACK's control id.")
    last_error = models.TextField(blank=True)
    payload = models.TextField(blank=True, help_text="The HL7 message as sent.")
    created_at = models.DateTimeField(default=timezone.now)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "target"], name="report_export_once")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="report_export_due")]


class CriticalResult(models.Model):
    """A critical finding flagged at signing: who was told, who acknowledged, whether it escalated."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="critical_results")
    version = models.ForeignKey(ReportVersion, on_delete=models.PROTECT, related_name="critical_results")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="critical_results",
        help_text="The referring clinician; empty: every clinician of the institution.",
    )
    note = models.TextField(blank=True)
    flagged_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField(help_text="Escalates to the coordinators when unacknowledged by then.")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    escalated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["due_at"],
                condition=Q(acknowledged_at__isnull=True, escalated_at__isnull=True),
                name="critical_open_due",
            ),
            models.Index(fields=["recipient", "acknowledged_at"], name="critical_recipient"),
        ]


# The exit sub-package's model, so that Django registers it with this app.
from .exit.models import ExitJob  # noqa: E402, F401
