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


# The turnaround stages a rollup keeps a histogram of (``figures.STAGES`` names them).
HISTOGRAM_STAGES = ("to_images", "to_complete", "to_claim", "to_sign", "total")
# Buckets of minutes: 0 is under a minute, 1 to 62 are log-spaced from a minute to 60 days
# (each about 20 % wider than the one before), 63 is 60 days or more.
HISTOGRAM_BUCKETS = 64
HISTOGRAM_MAX_MINUTES = 60 * 24 * 60.0


def histogram_column(stage: str, bucket: int) -> str:
    return f"{stage}_h{bucket}"


class StaleRollupDay(models.Model):
    """A day of an institution whose rollup rows no longer follow its study rows (refreshed before use)."""

    id = models.BigAutoField(primary_key=True)
    institution_id = models.UUIDField()
    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["institution_id", "day"], name="stale_rollup_day_unique")]


class StatRollup(models.Model):
    """One institution's studies of one local day, summed per pool and per one grouping of the charts.

    ``dim`` says which grouping the row is: ``all`` (none), ``modality``,
    ``priority``, ``body_part``, ``station`` or ``reader`` (the studies a
    radiologist read); only that grouping's column is set, the others are
    blank. Each row counts its studies, the SLA figures and the weighted
    workload, and keeps a histogram of minutes (``<stage>_h<bucket>``, see
    ``HISTOGRAM_BUCKETS``) per turnaround stage: ranges of more than
    ``STATISTICS_ROLLUP_DAYS`` days are summed from these rows, their
    percentiles read from the summed histograms (approximate).
    Kept by :mod:`.rollups` from the :class:`StudyStat` rows of the day;
    ``period = "month"`` rows sum a month's day rows, so a year reads about
    a month of day rows and a dozen month rows.
    """

    id = models.BigAutoField(primary_key=True)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+", db_index=False)
    period = models.CharField(max_length=5, default="day", help_text="day, or month: the sum of the month's days.")
    day = models.DateField(help_text="The local day, or a month's first day.")
    pool = models.ForeignKey(
        "workflow.RadiologistPool", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    dim = models.CharField(max_length=16)
    modality = models.CharField(max_length=16, blank=True)
    priority = models.CharField(max_length=8, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    station = models.CharField(max_length=64, blank=True)
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    studies = models.PositiveIntegerField(default=0)
    signed = models.PositiveIntegerField(default=0)
    offered = models.PositiveIntegerField(default=0)
    met = models.PositiveIntegerField(default=0)
    breached = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    escalations = models.PositiveIntegerField(default=0)
    weighted = models.FloatField(default=0.0, help_text="Signed studies weighted by STATISTICS_MODALITY_WEIGHTS.")

    class Meta:
        indexes = [
            models.Index(fields=["institution", "period", "dim", "day"], name="statrollup_inst_day"),
            models.Index(fields=["pool", "period", "dim", "day"], name="statrollup_pool_day"),
            models.Index(fields=["period", "dim", "day"], name="statrollup_day"),
        ]


for _stage in HISTOGRAM_STAGES:
    for _bucket in range(HISTOGRAM_BUCKETS):
        StatRollup.add_to_class(histogram_column(_stage, _bucket), models.IntegerField(default=0))
