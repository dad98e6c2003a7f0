"""Summary rows behind the statistics: one per study, and periodic samples of each edge's backlog.

They belong to the workflow app (its migrations); ``workflow.models`` imports
them so Django finds them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from pacs_cloud.models import Institution


class StudyStat(models.Model):
    """The life of one study in one row: when it was registered, imaged, completed, claimed and signed.

    Written by receivers of the actions' own signals and transitions
    (:mod:`workflow.statistics.record`); ``day`` is the local date (in the
    institution's zone) the images arrived, or the exam was registered.
    Only the first read of a study (not a second read or reconciliation)
    speaks for its reader, pool and SLA.
    """

    study = models.OneToOneField("archive.Study", on_delete=models.CASCADE, primary_key=True, related_name="+")
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    station = models.CharField(max_length=64, blank=True)
    priority = models.CharField(max_length=8, default="routine")
    registered_at = models.DateTimeField(null=True, blank=True)
    images_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    pool = models.ForeignKey(
        "workflow.RadiologistPool", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    due_at = models.DateTimeField(null=True, blank=True, help_text="When the first offer's SLA ran out.")
    breached = models.BooleanField(default=False)
    escalations = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["institution", "day"], name="studystat_inst_day"),
            models.Index(fields=["pool", "day"], name="studystat_pool_day"),
            models.Index(fields=["day"], name="studystat_day"),
        ]


class EdgeBacklogSample(models.Model):
    """What one edge gateway last reported about its outbox, taken every ``STATISTICS_EDGE_SAMPLE_SECONDS``."""

    id = models.BigAutoField(primary_key=True)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+", db_index=False)
    edge = models.ForeignKey("archive.EdgeGateway", on_delete=models.CASCADE, related_name="+")
    taken_at = models.DateTimeField(default=timezone.now)
    outbox_depth = models.PositiveIntegerField(default=0)
    oldest_unsent_seconds = models.FloatField(null=True, blank=True)
    seen_at = models.DateTimeField(null=True, blank=True, help_text="The heartbeat the sample repeats.")

    class Meta:
        indexes = [models.Index(fields=["institution", "taken_at"], name="edgesample_inst_time")]
