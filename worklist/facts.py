"""What other apps may know about a study's order, without touching order rows.

The workflow engine's routing rules and the reports app read these facts; they
change orders only through :mod:`worklist.actions`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from archive.models import Study

from .models import Order


@dataclass(frozen=True)
class StudyOrderFacts:
    order_id: uuid.UUID
    accession_number: str
    priority: str  # "routine", "urgent" or "stat"
    procedure_code: str
    procedure_name: str
    body_part: str
    modality: str
    clinical_info: str
    referring_physician: str  # DICOM PN
    state: str


def study_order_facts(study: Study) -> StudyOrderFacts | None:
    """The facts of the order ``study`` was linked to, or None for a study without one.

    With several orders on one study (rare: two procedures, one acquisition)
    the most urgent one speaks for the study.
    """
    orders = list(Order.objects.filter(study=study).exclude(state=Order.State.CANCELLED).select_related("procedure"))
    if not orders:
        return None
    rank = {Order.Priority.STAT: 0, Order.Priority.URGENT: 1, Order.Priority.ROUTINE: 2}
    order = min(orders, key=lambda o: (rank.get(Order.Priority(o.priority), 3), o.scheduled_at))
    return StudyOrderFacts(
        order_id=order.pk,
        accession_number=order.accession_number,
        priority=order.priority,
        procedure_code=order.procedure.code,
        procedure_name=order.procedure.name,
        body_part=order.procedure.body_part,
        modality=order.modality,
        clinical_info=order.clinical_info,
        referring_physician=order.referring_physician,
        state=order.state,
    )
