"""The copies' upkeep on a schedule: replication, the fixity scrubber, location probes.

Tasks take ids only and are safe to run twice; the beat schedule
(``settings.CELERY_BEAT_SCHEDULE``) runs each sweep.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, F, IntegerField, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import CopyPolicy, Instance
from . import actions, locations

log = logging.getLogger(__name__)

# New objects are replicated by the sweep; older ones whose copies were lost
# are found by the scrubber (or verify_archive).
REPLICATION_LOOKBACK = dt.timedelta(days=1)


def short_of_copies(*, since: dt.datetime | None = None) -> QuerySet[Instance]:
    """Instances with fewer good copies, or sites, than their institution's policy asks."""
    instances = Instance.objects.all()
    if since is not None:
        instances = instances.filter(received_at__gte=since)
    if settings.ARCHIVE_COPIES <= 1 and settings.ARCHIVE_SITES <= 1:
        # Only institutions with a policy of their own can ask for more than the one copy ingest makes.
        instances = instances.filter(institution__in=CopyPolicy.objects.values("institution"))
    good = Q(copies__status="good")
    return (
        instances.annotate(
            good=Count("copies", filter=good, distinct=True),
            sites=Count("copies__location__site", filter=good, distinct=True),
            need_copies=Coalesce(
                "institution__copy_policy__copies", Value(settings.ARCHIVE_COPIES), output_field=IntegerField()
            ),
            need_sites=Coalesce(
                "institution__copy_policy__sites", Value(settings.ARCHIVE_SITES), output_field=IntegerField()
            ),
        )
        .filter(Q(good__lt=F("need_copies")) | Q(sites__lt=F("need_sites")))
        .order_by("received_at")
    )


def _replicate_one(pk: str) -> int:
    try:
        return actions.do_replicate_instance(pk)
    except Exception:  # one failure must not stop the batch; the next sweep retries
        log.exception("replication of instance %s failed", pk)
        return 0


def _replicate_in_thread(pk: str) -> int:
    try:
        return _replicate_one(pk)
    finally:
        close_old_connections()


@shared_task(ignore_result=True)
def replicate_instances(instance_pks: list[str]) -> int:
    """Copy instances to the locations their policy asks for, several at once (``STORAGE_COPY_WORKERS``)."""
    if len(instance_pks) < 2 or transaction.get_connection().in_atomic_block:
        # Other threads' connections would not see this transaction's rows.
        return sum(_replicate_one(pk) for pk in instance_pks)
    with ThreadPoolExecutor(max_workers=settings.STORAGE_COPY_WORKERS) as pool:
        return sum(pool.map(_replicate_in_thread, instance_pks))


@shared_task(ignore_result=True)
def sweep_replication(batch: int = 500) -> int:
    """Copy recent objects short of their policy's copies to other locations (verified)."""
    since = timezone.now() - REPLICATION_LOOKBACK
    pks = [str(pk) for pk in short_of_copies(since=since).values_list("pk", flat=True)[:batch]]
    return replicate_instances(pks) if pks else 0


@shared_task(ignore_result=True)
def backfill_replication(institution_id: str, batch: int = 500) -> int:
    """Copy every object of an institution, however old, that is short of its policy (after a policy change)."""
    made, seen_last = 0, None
    while True:
        short = short_of_copies().filter(institution_id=institution_id).order_by("pk")
        if seen_last is not None:
            short = short.filter(pk__gt=seen_last)
        pks = [str(pk) for pk in short.values_list("pk", flat=True)[:batch]]
        if not pks:
            return made
        made += replicate_instances(pks)
        seen_last = pks[-1]


@shared_task(ignore_result=True)
def scrub_copies(max_seconds: float | None = None, limit: int = 10_000) -> int:
    """Re-read copies due for their fixity check, at most ``SCRUB_MB_PER_SECOND``, repairing bad ones.

    Stops after ``max_seconds`` (most of the sweep interval) so runs do not pile up.
    """
    budget = settings.SCRUB_SWEEP_SECONDS * 0.8 if max_seconds is None else max_seconds
    rate = max(settings.SCRUB_MB_PER_SECOND, 0.001) * 1_000_000
    started = time.monotonic()
    done = read = 0
    for pk in actions.due_copies().values_list("pk", flat=True)[:limit]:
        if time.monotonic() - started > budget:
            break
        check = actions.do_verify_copy(pk)
        done += 1
        read += check.size
        ahead = read / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # the rate limit: scrubbing never competes with ingest for the disks
    return done


@shared_task(ignore_result=True)
def check_locations() -> int:
    """Probe every location and record its health; returns how many are unhealthy."""
    unhealthy = 0
    for place in locations.places(fresh=True):
        error = locations.probe(place)
        actions.do_record_location_health(place.id, healthy=not error, error=error)
        unhealthy += bool(error)
    return unhealthy


@shared_task(ignore_result=True)
def recall_study(study_pk: str) -> int:
    """Copy a study read from a nearline tier back to the online default location."""
    from .lifecycle import do_recall_study

    return do_recall_study(study_pk)


@shared_task(ignore_result=True)
def apply_lifecycle_rules() -> int:
    """Move the studies every enabled lifecycle rule selects (copy, verify, then remove the online copy)."""
    from .lifecycle import do_apply_lifecycle_rules

    return do_apply_lifecycle_rules()


@shared_task(ignore_result=True)
def finish_restores(limit: int = 100) -> int:
    """Recall the studies whose archive-tier restores the stores have finished; returns how many."""
    from .restore import do_finish_restore, restores_in_progress

    done = 0
    for study_pk in restores_in_progress().values_list("study_id", flat=True)[:limit]:
        try:
            done += do_finish_restore(study_pk)
        except Exception:  # one study's store failing must not stop the others
            log.exception("finishing the restore of study %s failed", study_pk)
    return done
