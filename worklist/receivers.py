"""What the worklist does when the archive announces something (connected in ``apps.py``).

The archive sends these after its transaction committed, from inside the
ingest path: a failure here must never fail the store that caused it, so
every receiver logs its error and returns.
"""

from __future__ import annotations

import logging
from typing import Any

from archive.models import Instance, Study

from . import actions
from .models import PerformedProcedureStep, PerformedSeries

log = logging.getLogger(__name__)


def on_study_received(sender: Any, study: Study, **kwargs: Any) -> None:
    try:
        actions.link_or_queue(study)
    except Exception:
        log.exception("matching study %s to an order failed", study.pk)


def on_instance_stored(sender: Any, instance: Instance, created: bool = True, **kwargs: Any) -> None:
    """An image arrived: complete its study if a completed MPPS was only waiting for images."""
    if not created:
        return
    try:
        series = instance.series
        waiting = PerformedSeries.objects.filter(
            series_instance_uid=series.series_instance_uid,
            step__state=PerformedProcedureStep.State.COMPLETED,
            step__institution_id=series.study.institution_id,
        ).exists()
        if waiting:
            actions.check_study_completion(Study.objects.get(pk=series.study_id))
    except Exception:
        log.exception("MPPS completion check for instance %s failed", instance.pk)


def on_study_completed(sender: Any, study: Study, **kwargs: Any) -> None:
    try:
        actions.complete_orders_of_study(study)
    except Exception:
        log.exception("completing the orders of study %s failed", study.pk)
