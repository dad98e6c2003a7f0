"""Patient links, link suggestions and patients' consents (tables of the ``workflow`` app).

``workflow.models`` imports these classes so Django finds them; the changes
are ``workflow.links.actions``'.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from pacs_cloud.models import Institution

# The actor shown for what the consent expiry sweep does.
CONSENT_SWEEP = "consent expiry sweep"


class PatientLink(models.Model):
    """Two institutions' identifiers of one person (a PIX cross-reference, ITI TF-1 §5).

    Stored in a fixed order (``patient`` has the smaller primary key) so a
    pair has one active row. Rows are never deleted: an unlinked row keeps
    who, when and why.
    """

    class Source(models.TextChoices):
        REFERRAL_IMPORT = "referral_import", "Import of a referred study"
        CONFIRMED_MATCH = "confirmed_match", "Match confirmed by a coordinator"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey("archive.Patient", on_delete=models.PROTECT, related_name="+")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    other_patient = models.ForeignKey("archive.Patient", on_delete=models.PROTECT, related_name="+")
    other_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    source = models.CharField(max_length=16, choices=Source.choices)
    imported_study = models.ForeignKey(
        "workflow.ImportedStudy", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    score = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The confirmed suggestion's score.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    unlinked_at = models.DateTimeField(null=True, blank=True)
    unlinked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    unlink_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        app_label = "workflow"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "other_patient"], condition=Q(unlinked_at__isnull=True), name="patient_link_active"
            ),
        ]
        indexes = [
            models.Index(fields=["other_patient"], condition=Q(unlinked_at__isnull=True), name="patient_link_other"),
        ]

    @property
    def is_active(self) -> bool:
        return self.unlinked_at is None

    def side_of(self, institution_id: object) -> tuple[Any, Any]:
        """(the patient at ``institution_id``, the patient at the other institution)."""
        if self.institution_id == institution_id:
            return self.patient, self.other_patient
        return self.other_patient, self.patient


class PatientConsent(models.Model):
    """A patient's consent that one hospital's records be used at another (outside any referral).

    ``scope`` says what the receiving hospital gets; the consent holds from
    ``recorded_at`` until ``expires_at`` (none: until revoked) or its
    revocation. Rows are never deleted.
    """

    class Scope(models.TextChoices):
        COMPARISON = "comparison", "Earlier studies as comparisons when reading, with their signed reports"
        IDENTITY = "identity", "Identity cross-reference only (matching, no images)"

    class Method(models.TextChoices):
        WRITTEN = "written", "Written consent"
        VERBAL = "verbal", "Verbal consent, witnessed"
        REPRESENTATIVE = "representative", "Consent of a legal representative"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey("archive.Patient", on_delete=models.PROTECT, related_name="consents")
    granting_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    receiving_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.COMPARISON)
    method = models.CharField(max_length=16, choices=Method.choices, default=Method.WRITTEN)
    note = models.CharField(max_length=500, blank=True)
    recorded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    recorded_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        app_label = "workflow"
        ordering = ["-recorded_at"]
        indexes = [
            models.Index(
                fields=["patient", "receiving_institution"],
                condition=Q(revoked_at__isnull=True),
                name="consent_active",
            ),
            models.Index(fields=["expires_at"], condition=Q(revoked_at__isnull=True), name="consent_expiry"),
        ]

    def in_force(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class LinkSuggestion(ConcurrentTransitionMixin, models.Model):
    """A possible match between a consented patient of another hospital and one of the receiver's own.

    Made when a consent is recorded; shown to the receiving institution's
    referral coordinators with its score and reasons; nothing is linked until
    one of them confirms it.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        REJECTED = "rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consent = models.ForeignKey(PatientConsent, on_delete=models.CASCADE, related_name="suggestions")
    # The receiving institution's patient and the consented one.
    patient = models.ForeignKey("archive.Patient", on_delete=models.CASCADE, related_name="+")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    candidate = models.ForeignKey("archive.Patient", on_delete=models.CASCADE, related_name="+")
    score = models.PositiveSmallIntegerField()
    reasons = models.JSONField(default=list)
    state = FSMField(default=State.PENDING, choices=State.choices, protected=True)
    link = models.ForeignKey(PatientLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        app_label = "workflow"
        ordering = ["-score", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["patient", "candidate"], name="link_suggestion_unique"),
        ]
        indexes = [models.Index(fields=["institution", "state"], name="link_suggestion_inbox")]

    @transition(field=state, source=State.PENDING, target=State.CONFIRMED)
    def confirm(self, *, now: datetime, user: object, link: PatientLink) -> None:
        self.decided_at = now
        self.decided_by = user  # type: ignore[assignment]
        self.link = link

    @transition(field=state, source=State.PENDING, target=State.REJECTED)
    def reject(self, *, now: datetime, user: object) -> None:
        self.decided_at = now
        self.decided_by = user  # type: ignore[assignment]
