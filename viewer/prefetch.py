"""Prefetch: a study's relevant priors decoded before the reader opens them.

When a reading task is offered (``workflow.signals.tasks_offered``), the
viewer's Celery task :func:`viewer.tasks.warm_priors` decodes each prior's
image series into the decoded-volume cache (:mod:`viewer.caches`) of the
process that runs it, so rendering the prior's slices beside the current
study starts from memory. A prior kept in the archive tier is restored and
recalled online instead (:mod:`archive.copies.restore`). The cache is per process: the web processes that
also run the viewer's tasks (the embedded default) serve from it directly.
"""

from __future__ import annotations

import logging
from typing import Any

from archive.copies.restore import pending_restore
from archive.models import Study
from archive.priors.selection import select_priors

from . import mpr
from .caches import decoded_cache
from .pixels import RenderError

log = logging.getLogger(__name__)

# A series needs this many slices to be a volume (fewer are served frame by frame).
MIN_SLICES = 3


def warm_priors(study_id: Any) -> dict[str, int]:
    """Decode the relevant priors' image series of ``study_id``; what was warmed."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return {"studies": 0, "series": 0, "restoring": 0}
    warmed = {"studies": 0, "series": 0, "restoring": 0}
    for prior in select_priors(study):
        warmed["studies"] += 1
        if pending_restore(prior) is not None:
            warmed["restoring"] += 1  # in the archive tier: restored and recalled online before it is read
            continue
        for series in prior.series.all():
            if series.num_instances < MIN_SLICES or series.modality in ("SR", "KO", "PR", "DOC"):
                continue
            key = mpr.volume_key(series)
            if decoded_cache().get(key) is not None:
                warmed["series"] += 1
                continue
            try:
                mpr.series_volume(series, key)
            except (RenderError, OSError, ValueError) as exc:
                # Not a volume (mixed sizes, no geometry): its frames decode when shown.
                log.info("prior series %s not prefetched: %s", series.pk, exc)
                continue
            warmed["series"] += 1
    return warmed
