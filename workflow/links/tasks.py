"""Celery task of patient links: the periodic consent expiry sweep (loaded through ``CELERY_IMPORTS``)."""

from __future__ import annotations

from celery import shared_task

from . import actions


@shared_task(ignore_result=True)
def sweep_consents() -> dict[str, int]:
    """End expired consents and withdraw every linked prior no longer consented (scheduled by Celery beat)."""
    return actions.do_sweep_consents()
