"""What the worklist does when the archive announces something (connected in ``apps.py``).

The archive sends these after its transaction committed, from inside the
ingest path: a failure here must never fail the store that caused it, so
every receiver logs its error and returns.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection
from django.utils import timezone

from archive.models import Instance, Study
from pacs_cloud.models import Institution

from . import actions
from .models import PerformedProcedureStep, PerformedSeries

log = logging.getLogger(__name__)


def on_study_received(sender: Any, study: Study, **kwargs: Any) -> None:
    try:
        actions.link_or_queue(study)
    except Exception:
        log.exception("matching study %s to an order failed", study.pk)


def _waiting_step_sql() -> str:
    """Whether a completed step of the institution waits for the series' images.

    It runs for every stored image: written out once rather than built by the
    ORM each time (which costs more than running it). Names come from the models.
    """
    series, step = PerformedSeries._meta, PerformedProcedureStep._meta
    column = {f.name: f.column for f in step.concrete_fields}
    return (
        f'SELECT 1 FROM "{series.db_table}" s JOIN "{step.db_table}" p ON p."{step.pk.column}" = s."{series.get_field("step").column}" '  # noqa: S608
        f'WHERE s."series_instance_uid" = %s AND p."{column["state"]}" = %s AND p."{column["institution"]}" = %s LIMIT 1'
    )


_WAITING_STEP = _waiting_step_sql()


def on_instance_stored(sender: Any, instance: Instance, created: bool = True, **kwargs: Any) -> None:
    """An image arrived: complete its study if a completed MPPS was only waiting for images."""
    if not created:
        return
    try:
        # Once per stored image: one query, the series' UID as the archive
        # announced it (a series and its instances share the institution).
        series_uid = kwargs.get("series_instance_uid") or instance.series.series_instance_uid
        institution = Institution._meta.pk.get_db_prep_value(instance.institution_id, connection)  # type: ignore[union-attr]
        with connection.cursor() as cursor:
            cursor.execute(_WAITING_STEP, [series_uid, PerformedProcedureStep.State.COMPLETED, institution])
            waiting = cursor.fetchone() is not None
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
