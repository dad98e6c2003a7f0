"""What the worklist does when the archive announces something (connected in ``apps.py``).

The archive sends these after its transaction committed, from inside the
ingest path: a failure here must never fail the store that caused it, so
every receiver logs its error and returns.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

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
        # Once per stored image: one query, the series' UID as the archive
        # announced it (a series and its instances share the institution).
        series_uid = kwargs.get("series_instance_uid") or instance.series.series_instance_uid
        waiting = PerformedSeries.objects.filter(
            series_instance_uid=series_uid,
            step__state=PerformedProcedureStep.State.COMPLETED,
            step__institution_id=instance.institution_id,
        ).exists()
        if waiting:
            actions.check_study_completion(Study.objects.get(series__pk=instance.series_id))
    except Exception:
        log.exception("MPPS completion check for instance %s failed", instance.pk)


def on_study_completed(sender: Any, study: Study, **kwargs: Any) -> None:
    try:
        actions.complete_orders_of_study(study)
    except Exception:
        log.exception("completing the orders of study %s failed", study.pk)


def on_order_part_saved(sender: Any, instance: Any, created: bool = False, raw: bool = False, **kwargs: Any) -> None:
    """A patient, procedure, station or station's DICOM node changed: its scheduled orders changed with it.

    Their worklist records carry the part's values, so the orders' change time
    moves on and the edges' worklist feed (:mod:`worklist.edge`) sends them
    again. A new part has no orders yet.
    """
    if created or raw:
        return
    from archive.models import DicomNode, Patient

    from .models import Order, Procedure, Station

    orders = Order.objects.filter(state__in=Order.WORKLIST_STATES)
    if sender is Patient:
        orders = orders.filter(patient_id=instance.pk)
    elif sender is Procedure:
        orders = orders.filter(procedure_id=instance.pk)
    elif sender is Station:
        orders = orders.filter(station_id=instance.pk)
    elif sender is DicomNode:
        orders = orders.filter(station__node_id=instance.pk)
    else:
        return
    orders.update(updated_at=timezone.now())
