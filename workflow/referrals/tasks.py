"""Celery tasks of referrals and shares: the periodic sweep of response deadlines and share expiries.

Loaded by the worker through ``CELERY_IMPORTS`` (autodiscovery finds only
each app's own ``tasks`` module). Safe to run twice.
"""

from __future__ import annotations

from celery import shared_task

from . import actions


@shared_task(ignore_result=True)
def sweep_referrals() -> dict[str, int]:
    """Referral response reminders and share expiries (scheduled by Celery beat)."""
    return actions.do_sweep_referrals()
