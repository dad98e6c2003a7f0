"""Restores from the archive tier: objects whose only copies need a restore before they can be read.

A read of such a study (viewer, WADO-RS, C-MOVE/C-GET, prefetch of priors)
asks the store to restore its objects and tells the reader when they should
be ready; it is not served a partial study. A sweep watches the restores and,
once the store has made an object readable, recalls the study: each object
is copied back to the online default location and its SHA-256 checked there
(the archive class allows no read before), so it stays online
``RECALL_KEEP_DAYS`` like any recalled study.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from pacs_cloud import audit

from ..models import Instance, ObjectCopy, StorageLocation, Study, StudyAccess
from ..storage import RESTORE_READY
from . import locations

log = logging.getLogger(__name__)

# How long the store keeps a restored object readable; the recall copies it online long before.
RESTORED_DAYS = 2


@dataclass(frozen=True)
class RestorePending:
    """A study that cannot be read until the archive tier has restored its objects."""

    study_pk: Any
    ready_by: dt.datetime

    @property
    def retry_after(self) -> int:
        """Seconds a caller should wait before asking again (at least a minute)."""
        return max(60, math.ceil((self.ready_by - timezone.now()).total_seconds()))

    @property
    def minutes(self) -> int:
        return max(1, math.ceil(self.retry_after / 60))

    def message(self) -> str:
        return f"retrieving from the archive, about {self.minutes} minutes"


def archived_only(instances: QuerySet[Instance]) -> QuerySet[Instance]:
    """The instances whose every good copy is in the archive tier (none online or nearline)."""
    good = ObjectCopy.objects.filter(instance=OuterRef("pk"), status=ObjectCopy.Status.GOOD)
    archive = StorageLocation.Tier.ARCHIVE
    return instances.filter(Exists(good.filter(location__tier=archive))).exclude(
        Exists(good.exclude(location__tier=archive))
    )


def pending_restore(
    study: Study, instance_pks: list[Any] | None = None, *, requested_by: Any = None
) -> RestorePending | None:
    """``None`` when the study (or the given instances of it) can be read now; else start its restore.

    One indexed query when nothing is archived: cheap enough for every retrieval.
    """
    instances = Instance.objects.filter(series__study=study)
    if instance_pks is not None:
        instances = instances.filter(pk__in=instance_pks)
    if not archived_only(instances).exists():
        return None
    return do_request_restore(study, requested_by=requested_by)


def do_request_restore(study: Study, *, requested_by: Any = None) -> RestorePending | None:
    """Ask the archive tier to restore the study's archived objects (once; audited); when they should be ready."""
    now = timezone.now()
    with transaction.atomic():
        access, _ = StudyAccess.objects.select_for_update().get_or_create(study=study)
        if access.restore_requested_at is not None and access.restore_ready_by is not None:
            return RestorePending(study.pk, max(access.restore_ready_by, now))
        waiting = list(archived_only(Instance.objects.filter(series__study=study)).values_list("pk", "storage_key"))
        if not waiting:
            return None
        copies = ObjectCopy.objects.filter(
            instance_id__in=[pk for pk, _ in waiting],
            status=ObjectCopy.Status.GOOD,
            location__tier=StorageLocation.Tier.ARCHIVE,
        ).select_related("location")
        asked: dict[Any, dt.datetime] = {}
        for copy in copies:
            if copy.instance_id in asked:
                continue  # one restore per object is enough
            storage: Any = locations.place(copy.location_id).storage
            request = getattr(storage, "request_restore", None)
            try:
                if request is not None:
                    request(copy.key, days=RESTORED_DAYS)
            except Exception:  # this store refused: another archive copy may do
                log.warning("restore of %s at %s refused", copy.key, copy.location.name, exc_info=True)
                continue
            asked[copy.instance_id] = now + dt.timedelta(minutes=copy.location.restore_minutes)
        if not asked:
            log.error("no archive location would restore the objects of study %s", study.pk)
            ready_by = now + dt.timedelta(seconds=settings.RESTORE_SWEEP_SECONDS)
        else:
            ready_by = max(asked.values())
        access.restore_requested_at, access.restore_ready_by = now, ready_by
        access.save(update_fields=["restore_requested_at", "restore_ready_by"])
        user = requested_by if getattr(requested_by, "is_authenticated", False) else None
        audit.record(
            "archive.study.restore",
            actor=user,
            actor_label="" if user else "lifecycle",
            institution=study.institution_id,
            object_type="archive.study",
            object_id=study.pk,
            detail={"objects": len(waiting), "requested": len(asked), "ready_by": ready_by.isoformat()},
        )
    return RestorePending(study.pk, ready_by)


def restored(instance: Instance) -> bool:
    """Whether some archive-tier copy of the instance can be read now."""
    for copy in ObjectCopy.objects.filter(
        instance=instance, status=ObjectCopy.Status.GOOD, location__tier=StorageLocation.Tier.ARCHIVE
    ):
        storage: Any = locations.place(copy.location_id).storage
        state = getattr(storage, "restore_state", None)
        try:
            if state is None or state(copy.key) == RESTORE_READY:
                return True
        except Exception:  # the store does not answer: not ready, as far as we know
            log.warning("could not ask %s about the restore of %s", copy.location_id, copy.key, exc_info=True)
    return False


def do_finish_restore(study_pk: Any) -> bool:
    """Recall the study once every archived object is readable; whether it is readable online now."""
    from .lifecycle import do_recall_study

    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return False
    waiting = list(archived_only(Instance.objects.filter(series__study=study)))
    if any(not restored(instance) for instance in waiting):
        return False
    if waiting:
        do_recall_study(study.pk)
    if archived_only(Instance.objects.filter(series__study=study)).exists():
        return False  # a copy failed its check on the way online: the next sweep tries again
    StudyAccess.objects.filter(study=study).update(restore_requested_at=None, restore_ready_by=None)
    return True


def restores_in_progress() -> QuerySet[StudyAccess]:
    return StudyAccess.objects.filter(restore_requested_at__isnull=False).order_by("restore_ready_by")
