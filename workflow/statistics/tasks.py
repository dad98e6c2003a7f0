from __future__ import annotations

from celery import shared_task

from . import rollups
from .record import do_sample_edge_backlogs


@shared_task(ignore_result=True)
def sample_edge_backlogs() -> int:
    """Beat: one backlog sample per live edge (``STATISTICS_EDGE_SAMPLE_SECONDS``)."""
    return do_sample_edge_backlogs()


@shared_task(ignore_result=True)
def refresh_stale_rollups() -> int:
    """Beat: recompute the rollups of the days whose study rows changed (``STATISTICS_ROLLUP_SWEEP_SECONDS``)."""
    return rollups.refresh_stale()
