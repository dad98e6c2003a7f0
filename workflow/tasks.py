"""Celery tasks of the workflow engine: SLA timers and the periodic sweep.

Each takes ids only, re-reads and re-checks state, and is safe to run twice:
an ETA message delivered late, early or twice changes nothing that the sweep
would not.
"""

from __future__ import annotations

from celery import shared_task

from . import actions


@shared_task(ignore_result=True)
def escalate_if_due(task_id: str) -> bool:
    """Fast path of one task's SLA timer."""
    return actions.do_escalate_reading_task(task_id)


@shared_task(ignore_result=True)
def sweep_reading_tasks() -> dict[str, int]:
    """The guarantee behind every timer (scheduled by Celery beat)."""
    return actions.do_sweep_reading_tasks()


@shared_task(ignore_result=True)
def route_study(study_id: str) -> str | None:
    """Start the reading process of a complete study (safe to run twice)."""
    from archive.models import Study

    study = Study.objects.select_related("institution", "patient").filter(pk=study_id).first()
    if study is None or study.state not in (Study.State.COMPLETE, Study.State.ROUTED):
        return None
    return str(actions.do_start_reading_process(study).pk)
