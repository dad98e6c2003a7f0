"""Celery tasks of the viewer: prefetching the priors of offered reading tasks."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from . import prefetch

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def warm_priors(study_id: str) -> dict[str, int]:
    """Decode the relevant priors of a study being offered for reading (safe to run twice)."""
    return prefetch.warm_priors(study_id)


def on_tasks_offered(sender: Any, study_ids: list[Any], **kwargs: Any) -> None:
    """Receiver of ``workflow.signals.tasks_offered`` (already after commit): queue the prefetch."""
    for study_id in study_ids:
        try:
            warm_priors.delay(str(study_id))
        except Exception as exc:  # a lost prefetch only makes the first prior image slower
            log.warning("could not queue the prefetch of the priors of study %s: %s", study_id, exc)
