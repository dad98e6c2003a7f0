"""DCE-MRI map jobs, and the tissue T1 an institution assumes where no T1 map was acquired.

Rows are written only by ``viewer.analysis.actions``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from archive.models import Study
from pacs_cloud.models import Institution


class DceMapJob(ConcurrentTransitionMixin, models.Model):
    """Voxel-wise pharmacokinetic maps of a dynamic series inside a mask, computed by a Celery task.

    queued → running (a worker claimed it) → done | failed | cancelled; a
    queued job is cancelled at once, a running one when its worker next
    reports progress and finds ``cancel_requested``.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (State.DONE, State.FAILED, State.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="dce_map_jobs")
    series = models.JSONField(help_text="ids of the series forming the dynamic acquisition, as given")
    mask = models.JSONField(help_text="regions per slice: {'regions': [{'slice': k, 'polygon': [[x, y], ...]}]}")
    model = models.CharField(max_length=32)
    aif = models.JSONField()
    options = models.JSONField(default=dict, help_text="t1_ms, relaxivity, hematocrit, baseline_points")
    state = FSMField(max_length=16, choices=State.choices, default=State.QUEUED, protected=True)
    progress = models.FloatField(default=0.0, help_text="share of the voxels fitted, 0–1")
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    results = models.JSONField(default=dict, help_text="per map: the stored Parametric Map and its statistics")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["study", "created_at"])]

    def __str__(self) -> str:
        return f"DCE maps {self.model} of study {self.study_id} ({self.state})"

    # Transitions change this row's fields only; actions save and log them.

    @transition(field=state, source=State.QUEUED, target=State.RUNNING)
    def begin(self) -> None:
        self.progress = 0.0

    @transition(field=state, source=State.RUNNING, target=State.DONE)
    def finish(self, *, results: dict, now: datetime) -> None:
        self.results, self.progress, self.finished_at = results, 1.0, now

    @transition(field=state, source=State.RUNNING, target=State.FAILED)
    def fail(self, *, error: str, now: datetime) -> None:
        self.error, self.finished_at = error[:2000], now

    @transition(field=state, source=[State.QUEUED, State.RUNNING], target=State.CANCELLED)
    def cancel(self, *, now: datetime) -> None:
        self.cancel_requested, self.finished_at = True, now


class AssumedTissueT1(models.Model):
    """The pre-contrast T1 an institution assumes for a body region when the study has no T1 map."""

    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    body_part = models.CharField(max_length=64, blank=True, help_text="Body Part Examined; empty: any other region")
    t1_ms = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "body_part"], name="assumed_t1_once_per_region"),
        ]

    def __str__(self) -> str:
        return f"{self.body_part or 'any region'}: T1 {self.t1_ms:g} ms"


class DceRegionAnalysis(models.Model):
    """A region a reader drew on a dynamic series: its curves, enhancement descriptors and Tofts fit."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="dce_regions")
    series = models.JSONField(help_text="ids of the series forming the dynamic acquisition")
    region = models.JSONField(help_text="{'slice': k, 'polygon': [[x, y], ...]}")
    label = models.CharField(max_length=64, blank=True)
    results = models.JSONField(help_text="times, curves, descriptors, fit")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["study", "created_at"])]

    def __str__(self) -> str:
        return f"DCE region {self.label or self.pk} of study {self.study_id}"
