"""Background work of the archive: object-store copies, cache eviction, study completion.

Every task takes ids only, re-reads state and is safe to run twice. The
periodic sweeps (Celery beat, ``settings.CELERY_BEAT_SCHEDULE``) are what
guarantee the work happens; tasks queued after commit are the fast path.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from . import actions
from .models import Instance
from .storage import CACHE, STORED, TieredStorage, get_storage

log = logging.getLogger(__name__)


def _copy_one(pk: Any) -> bool:
    try:
        return actions.do_copy_to_object_store(pk)
    except Exception:  # one failed copy must not stop the batch; the sweep retries
        log.exception("copy of instance %s to the object store failed", pk)
        return False
    finally:
        close_old_connections()


@shared_task(ignore_result=True)
def copy_to_object_store(instance_pks: list[str]) -> int:
    """Copy cached instances to the object store with several parallel uploads."""
    if not isinstance(get_storage(), TieredStorage):
        return 0
    with ThreadPoolExecutor(max_workers=settings.STORAGE_COPY_WORKERS) as pool:
        return sum(pool.map(_copy_one, instance_pks))


@shared_task(ignore_result=True)
def sweep_object_store_copies(batch: int = 200) -> int:
    """Queue copies of instances still only in the cache after a grace period."""
    if not isinstance(get_storage(), TieredStorage):
        return 0
    cutoff = timezone.now() - dt.timedelta(seconds=settings.STORAGE_COPY_GRACE_SECONDS)
    pks = [
        str(pk) for pk in Instance.objects.filter(location=CACHE, received_at__lte=cutoff).values_list("pk", flat=True)
    ]
    for start in range(0, len(pks), batch):
        copy_to_object_store.delay(pks[start : start + batch])
    return len(pks)


@shared_task(ignore_result=True)
def evict_cached_copies() -> int:
    """Drop cached copies older than the retention whose object is safely in the object store.

    Walks the cache folder (bounded by the retention) rather than the index
    (which grows without bound).
    """
    storage = get_storage()
    if not isinstance(storage, TieredStorage):
        return 0
    cutoff = time.time() - settings.STORAGE_CACHE_RETENTION_HOURS * 3600
    root = storage.cache.root.resolve()
    evicted = 0
    for path in root.rglob("*.dcm"):
        try:
            if path.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        key = path.relative_to(root).as_posix()
        if key.startswith("conflicts/"):
            continue
        sop_uid = path.name.removesuffix(".dcm").rsplit(".", 1)[0]
        if Instance.objects.filter(sop_instance_uid=sop_uid, storage_key=key, location=STORED).exists():
            storage.evict(key)
            evicted += 1
    return evicted


@shared_task(ignore_result=True)
def discard_stale_staging(max_age_hours: float = 1.0) -> int:
    """Remove staging files a crashed process left behind (nothing refers to them)."""
    storage = get_storage()
    local = storage.cache if isinstance(storage, TieredStorage) else storage
    folder = getattr(local, "_staging", None)
    if folder is None or not folder.exists():
        return 0
    cutoff = time.time() - max_age_hours * 3600
    removed = 0
    for path in folder.glob("*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


@shared_task(ignore_result=True)
def complete_stable_studies() -> int:
    """Complete studies that received nothing for their stability window (sends ``study_completed``)."""
    return actions.do_complete_stable_studies()
