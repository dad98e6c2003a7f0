"""The exit job: one export of an institution and, after it, its offboarding."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition


class ExitJob(ConcurrentTransitionMixin, models.Model):
    """An export of one institution (a Celery job with progress), cancellable and restartable.

    ``institution_id`` is a plain column, like the audit trail's: the job, its
    manifest digest and the certificate of deletion outlive the institution.
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"
        # The institution was removed after this export (terminal).
        OFFBOARDED = "offboarded"

    class Destination(models.TextChoices):
        DOWNLOAD = "download", "A download (tar)"
        S3 = "s3", "An S3 bucket"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution_id = models.UUIDField(db_index=True)
    institution_name = models.CharField(max_length=200)
    institution_slug = models.CharField(max_length=50)
    requested_by = models.CharField(max_length=150, blank=True)
    destination = models.CharField(max_length=16, choices=Destination.choices, default=Destination.DOWNLOAD)
    bucket = models.CharField(max_length=63, blank=True)
    prefix = models.CharField(max_length=200, blank=True)
    endpoint_url = models.CharField(max_length=300, blank=True)
    state = FSMField(default=State.QUEUED, choices=State.choices, protected=True)
    # Each restart runs under a new attempt number; a task of an earlier one stops.
    attempt = models.PositiveIntegerField(default=1)
    files_total = models.PositiveIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    archive_size = models.BigIntegerField(null=True, blank=True)
    archive_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the tar (downloads).")
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    offboarded_at = models.DateTimeField(null=True, blank=True)
    offboarded_by = models.CharField(max_length=150, blank=True)
    # The certificate of deletion: the exact signed bytes (canonical JSON),
    # the Ed25519 signature and the signing key's fingerprint and public key.
    certificate = models.BinaryField(null=True, blank=True)
    certificate_signature = models.BinaryField(null=True, blank=True)
    certificate_key = models.CharField(max_length=64, blank=True)
    certificate_public_key = models.BinaryField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export of {self.institution_name} ({self.state})"

    @property
    def progress(self) -> float:
        if self.state in (self.State.DONE, self.State.OFFBOARDED):
            return 1.0
        if self.bytes_total:
            return min(self.bytes_done / self.bytes_total, 1.0)
        return self.files_done / self.files_total if self.files_total else 0.0

    # Transition methods change only this row (django-fsm-2's advice).

    @transition(field=state, source=State.QUEUED, target=State.RUNNING)
    def start(self, *, now: Any) -> None:
        self.started_at = now
        self.finished_at = None
        self.error = ""
        self.files_done = self.bytes_done = 0

    @transition(field=state, source=State.RUNNING, target=State.DONE)
    def finish(self, *, now: Any) -> None:
        self.finished_at = now

    @transition(field=state, source=State.RUNNING, target=State.FAILED)
    def fail(self, *, now: Any, error: str) -> None:
        self.finished_at = now
        self.error = error[:2000]

    @transition(field=state, source=[State.QUEUED, State.RUNNING], target=State.CANCELLED)
    def cancel(self, *, now: Any) -> None:
        self.finished_at = now

    @transition(field=state, source=[State.FAILED, State.CANCELLED, State.DONE], target=State.QUEUED)
    def restart(self) -> None:
        self.attempt += 1
        self.finished_at = None
        self.archive_size = None
        self.archive_sha256 = self.manifest_sha256 = ""

    @transition(field=state, source=State.DONE, target=State.OFFBOARDED)
    def offboard(self, *, now: Any, by: str) -> None:
        self.offboarded_at = now
        self.offboarded_by = by
