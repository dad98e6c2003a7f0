"""The export's Celery task: ids only, re-reads the job, safe to run twice (``do_run_export`` checks the attempt)."""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def run_exit_export(job_id: str, attempt: int) -> str:
    from .actions import do_run_export

    return do_run_export(job_id, attempt)
