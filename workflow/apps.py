from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig

log = logging.getLogger(__name__)


class WorkflowConfig(AppConfig):
    name = "workflow"
    verbose_name = "Reading workflow"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from archive import signals as archive_signals
        from worklist import signals as worklist_signals

        from .models import RadiologistPool, ReadingAgreement
        from .policy import clear_agreement_cache

        for model in (ReadingAgreement, RadiologistPool):
            post_save.connect(clear_agreement_cache, sender=model, dispatch_uid=f"workflow.cache.{model.__name__}")
            post_delete.connect(clear_agreement_cache, sender=model, dispatch_uid=f"workflow.cache.d.{model.__name__}")

        archive_signals.study_completed.connect(on_study_completed, dispatch_uid="workflow.study_completed")
        self._connect_statistics()
        worklist_signals.order_cancelled.connect(on_order_cancelled, dispatch_uid="workflow.order_cancelled")
        worklist_signals.order_priority_changed.connect(
            on_order_priority_changed, dispatch_uid="workflow.order_priority_changed"
        )

    def _connect_statistics(self) -> None:
        from archive import signals as archive_signals
        from pacs_cloud.fsm import transition_recorded
        from worklist import signals as worklist_signals

        from .statistics import checks, record  # noqa: F401 (checks registers the system checks)

        archive_signals.study_received.connect(record.on_study_received, dispatch_uid="workflow.statistics.received")
        worklist_signals.order_linked.connect(record.on_order_linked, dispatch_uid="workflow.statistics.linked")
        worklist_signals.order_priority_changed.connect(
            record.on_order_priority_changed, dispatch_uid="workflow.statistics.priority"
        )
        transition_recorded.connect(record.on_transition, dispatch_uid="workflow.statistics.transition")


def on_study_completed(sender: Any, study: Any, **kwargs: Any) -> None:
    """Route at once in the completing process; the sweep routes any study this misses."""
    from .actions import do_start_reading_process

    try:
        do_start_reading_process(study)
    except Exception:  # the sender must not fail for us; the sweep retries
        log.exception("routing study %s failed; the sweep will retry", study.pk)


def on_order_cancelled(sender: Any, order: Any, **kwargs: Any) -> None:
    from .actions import do_cancel_process, processes_for_order

    for process in processes_for_order(order):
        do_cancel_process(process, actor_label="order cancelled", reason=f"order {getattr(order, 'pk', '')} cancelled")


def on_order_priority_changed(sender: Any, order: Any, old_priority: Any = None, **kwargs: Any) -> None:
    from .actions import do_retime_process, processes_for_order

    for process in processes_for_order(order):
        do_retime_process(
            process,
            priority=getattr(order, "priority", ""),
            actor_label="order priority changed",
            reason=f"priority {old_priority} → {getattr(order, 'priority', '')}",
        )
