"""Writes of the copies' upkeep: replication, fixity checks, repairs, copy alerts, policies.

A copy is recorded good only after its bytes were read back from its
location and their SHA-256 matched the object's (``Instance.sha256``). A
source is used only after the same check, so a corrupt copy never spreads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.models import Institution

from ..models import CopyAlert, CopyPolicy, Instance, ObjectCopy, StorageLocation
from ..storage import CHUNK, Storage, TieredStorage
from . import locations
from .locations import Place

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirement:
    copies: int
    sites: int
    location_ids: tuple[Any, ...] = ()


def requirement(institution_id: Any) -> Requirement:
    """What the institution's copy policy asks, or the platform defaults."""
    policy = CopyPolicy.objects.filter(institution_id=institution_id).first()
    if policy is None:
        return Requirement(settings.ARCHIVE_COPIES, settings.ARCHIVE_SITES)
    return Requirement(policy.copies, policy.sites, tuple(policy.locations.values_list("pk", flat=True)))


def do_save_copy_policy(
    institution: Institution,
    *,
    copies: int,
    sites: int,
    location_ids: Iterable[Any] = (),
    acting_user: Any,
) -> CopyPolicy:
    """Set how many good copies the institution's objects need and where (audited)."""
    if copies < 1 or sites < 1 or sites > copies:
        raise ValueError("a policy needs at least one copy, at least one site, and no more sites than copies")
    chosen = list(StorageLocation.objects.filter(pk__in=list(location_ids)))
    if chosen and len({loc.site for loc in chosen} | {_default_site()}) < sites:
        raise ValueError(f"the chosen locations span fewer than {sites} sites")
    with transaction.atomic():
        policy, _ = CopyPolicy.objects.select_for_update().get_or_create(institution=institution)
        before = {"copies": policy.copies, "sites": policy.sites}
        policy.copies, policy.sites, policy.updated_at = copies, sites, timezone.now()
        policy.save()
        policy.locations.set(chosen)
        audit.record(
            "archive.copy_policy.save",
            actor=acting_user,
            institution=institution,
            object_type="archive.copypolicy",
            object_id=policy.pk,
            detail={"before": before, "copies": copies, "sites": sites, "locations": [loc.name for loc in chosen]},
        )
        from .tasks import backfill_replication

        # The sweep copies new objects; the ones archived before the policy asked for more, this does.
        backfill_replication.delay_on_commit(str(institution.pk))
    return policy


def _default_site() -> str:
    return StorageLocation.objects.filter(is_default=True).values_list("site", flat=True).first() or ""


# Replication ----------------------------------------------------------------------


def _targets(good: list[Place], need: Requirement) -> list[Place]:
    """Locations to add copies to, new sites first, until the requirement is met."""
    candidates = [
        p
        for p in locations.places()
        if p.healthy
        and p.tier != StorageLocation.Tier.ARCHIVE
        and p.replica_of is None
        and p.id not in {g.id for g in good}
        and (not need.location_ids or p.id in need.location_ids or p.is_default)
    ]
    sites = {p.site for p in good}
    chosen: list[Place] = []
    for candidate in candidates:
        if len(sites) >= need.sites:
            break
        if candidate.site not in sites:
            chosen.append(candidate)
            sites.add(candidate.site)
    for candidate in candidates:
        if len(good) + len(chosen) >= need.copies:
            break
        if candidate not in chosen:
            chosen.append(candidate)
    return chosen


def do_replicate_instance(instance_pk: Any) -> int:
    """Give an instance the copies its policy asks for; returns how many were made.

    Safe to run twice and concurrently: a copy is the same key with the same
    bytes, and its row is written with ``update_or_create``.
    """
    instance = Instance.objects.filter(pk=instance_pk).first()
    if instance is None:
        return 0
    need = requirement(instance.institution_id)
    good = _good_places(instance)
    if _count_store_replicas(instance, good):
        good = _good_places(instance)
    targets = _targets(good, need)
    if not targets:
        return 0
    made = 0
    with _verified_source(instance, good) as source:
        if source is None:
            _update_alert(instance)
            return 0
        for target in targets:
            if _write_copy(instance, target, source):
                made += 1
    _update_alert(instance)
    return made


def _count_store_replicas(instance: Instance, good: list[Place]) -> int:
    """Record the replicas the object stores made themselves of a good copy, each once its SHA-256 is re-read.

    A replica not there yet (the store's replication lags) is looked for again by the next sweep.
    """
    sources = {p.id for p in good}
    counted = 0
    for place in locations.places():
        if place.replica_of not in sources or place.id in sources:
            continue
        key = instance.storage_key
        try:
            digest, size = locations.fixity_of(place, _checked_storage(place, key), key)
        except Exception as exc:  # not replicated yet, or the store does not answer
            log.info("no verified store replica of %s at %s yet: %s", key, place.name, exc)
            continue
        if (digest, size) == (instance.sha256, instance.size):
            _record(instance, place, ObjectCopy.Status.GOOD)
            counted += 1
        else:
            log.error("the store's replica of %s at %s has other bytes", key, place.name)
            _record(instance, place, ObjectCopy.Status.CORRUPT)
    return counted


def _good_places(instance: Instance) -> list[Place]:
    ids = ObjectCopy.objects.filter(instance=instance, status=ObjectCopy.Status.GOOD).values_list(
        "location_id", flat=True
    )
    return [p for p in locations.places() if p.id in set(ids)]


class _Source:
    """A verified temporary copy of an object, removed on exit."""

    def __init__(self, instance: Instance, good: list[Place], exclude: Any = None) -> None:
        self.instance, self.good, self.exclude = instance, good, exclude
        self.path: Path | None = None

    def __enter__(self) -> Path | None:
        folder = Path(settings.DATA_DIR) / "copies-tmp"
        folder.mkdir(parents=True, exist_ok=True)
        order = {p.id: n for n, p in enumerate(locations.reading_order())}
        for place in sorted(self.good, key=lambda p: order.get(p.id, 1_000)):
            if place.id == self.exclude:
                continue
            fd, name = tempfile.mkstemp(dir=folder, suffix=".dcm")
            path = Path(name)
            try:
                digest = hashlib.sha256()
                with (
                    os.fdopen(fd, "wb") as out,
                    _checked_storage(place, self.instance.storage_key).open(self.instance.storage_key) as handle,
                ):
                    for block in iter(lambda: handle.read(CHUNK), b""):
                        digest.update(block)
                        out.write(block)
            except Exception as exc:  # this copy is unreadable now: try the next
                path.unlink(missing_ok=True)
                log.warning("copy of %s at %s unreadable: %s", self.instance.storage_key, place.name, exc)
                continue
            if digest.hexdigest() == self.instance.sha256:
                self.path = path
                return path
            path.unlink(missing_ok=True)
            _record(self.instance, place, ObjectCopy.Status.CORRUPT)
        return None

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _verified_source(instance: Instance, good: list[Place], exclude: Any = None) -> _Source:
    return _Source(instance, good, exclude)


def _checked_storage(place: Place, key: str) -> Storage:
    """The store a copy lives in: with ``s3://`` storage the default location's copy is the object store's
    once it was copied there (the local cache only holds it on the way)."""
    storage = place.storage
    if isinstance(storage, TieredStorage):
        return storage.store if storage.cache.local_path(key) is None else storage.cache
    return storage


def _write_copy(instance: Instance, target: Place, source: Path) -> bool:
    key = instance.storage_key
    storage = target.storage
    try:
        if isinstance(storage, TieredStorage):
            storage.store.put_file(key, source, instance.sha256)
        else:
            storage.put_file(key, source, instance.sha256)
        digest, size = locations.fixity_of(target, _checked_storage(target, key), key)
    except Exception as exc:  # the target store failed: the next sweep tries again
        log.warning("copying %s to %s failed: %s", key, target.name, exc)
        return False
    if digest != instance.sha256 or size != instance.size:
        log.error("the copy of %s written to %s reads back other bytes", key, target.name)
        _record(instance, target, ObjectCopy.Status.CORRUPT)
        return False
    _record(instance, target, ObjectCopy.Status.GOOD, written=True)
    return True


def _record(instance: Instance, place: Place, status: str, *, written: bool = False) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {
        "key": instance.storage_key,
        "size": instance.size,
        "sha256": instance.sha256,
        "status": status,
        "verified_at": now,
    }
    if written:
        fields["written_at"] = now
    ObjectCopy.objects.update_or_create(instance=instance, location_id=place.id, defaults=fields)


# Fixity ---------------------------------------------------------------------------


@dataclass
class Check:
    copy_id: int
    location: str
    key: str
    status: str  # good, missing, corrupt, or unreachable (the location did not answer: nothing recorded)
    size: int
    repaired: bool = False


def do_verify_copy(copy_pk: Any, *, repair: bool = True) -> Check:
    """Re-read one copy, compare its SHA-256 and record the result; repair a bad copy from a good one."""
    copy = ObjectCopy.objects.select_related("instance").get(pk=copy_pk)
    instance = copy.instance
    place = locations.place(copy.location_id)
    try:
        digest, size = locations.fixity_of(place, _checked_storage(place, copy.key), copy.key)
        status = ObjectCopy.Status.GOOD if digest == instance.sha256 else ObjectCopy.Status.CORRUPT
    except FileNotFoundError:
        status, size = ObjectCopy.Status.MISSING, 0
    except Exception as exc:  # a store that does not answer says nothing about the copy
        if locations._is_missing(exc):
            status, size = ObjectCopy.Status.MISSING, 0
        else:
            log.warning("could not verify %s at %s: %s", copy.key, place.name, exc)
            return Check(copy.pk, place.name, copy.key, "unreachable", 0)
    ObjectCopy.objects.filter(pk=copy.pk).update(status=status, verified_at=timezone.now())
    check = Check(copy.pk, place.name, copy.key, status, size or copy.size)
    if status == ObjectCopy.Status.GOOD:
        if copy.status != ObjectCopy.Status.GOOD:
            _update_alert(instance)  # good again (repaired elsewhere): the alert may clear
        return check
    log.error("copy of %s at %s is %s", copy.key, place.name, status)
    _update_alert(instance)
    if repair:
        good = _good_places(instance)
        with _verified_source(instance, good, exclude=place.id) as source:
            if source is not None:
                check.repaired = _write_copy(instance, place, source)
        if check.repaired:
            do_replicate_instance(instance.pk)  # and any copy still short of the policy
        _update_alert(instance)
    return check


def due_copies(*, now: Any = None) -> Any:
    """Copies whose last check (or write) is older than the fixity cycle, oldest first."""
    from django.db.models.functions import Coalesce

    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.FIXITY_CYCLE_DAYS)
    return (
        ObjectCopy.objects.annotate(checked=Coalesce("verified_at", "written_at"))
        .filter(checked__lte=cutoff)
        .order_by("checked", "pk")
    )


# Alerts ---------------------------------------------------------------------------


def _update_alert(instance: Instance) -> None:
    """Raise or clear the instance's copy alert after a change of its copies (audited either way)."""
    need = requirement(instance.institution_id)
    good = ObjectCopy.objects.filter(instance=instance, status=ObjectCopy.Status.GOOD).count()
    with transaction.atomic():
        open_alert = CopyAlert.objects.select_for_update().filter(instance=instance, cleared_at=None).first()
        if good < need.copies and open_alert is None:
            alert = CopyAlert.objects.create(
                institution_id=instance.institution_id, instance=instance, good_copies=good, required=need.copies
            )
            audit.record(
                "archive.copy_alert.raise",
                actor_label="fixity",
                institution=instance.institution_id,
                object_type="archive.instance",
                object_id=instance.pk,
                outcome="failure",
                detail={"alert": alert.pk, "good_copies": good, "required": need.copies, "key": instance.storage_key},
            )
        elif good < need.copies and open_alert is not None and open_alert.good_copies != good:
            open_alert.good_copies = good
            open_alert.save(update_fields=["good_copies"])
        elif good >= need.copies and open_alert is not None:
            open_alert.cleared_at = timezone.now()
            open_alert.good_copies = good
            open_alert.save(update_fields=["cleared_at", "good_copies"])
            audit.record(
                "archive.copy_alert.clear",
                actor_label="fixity",
                institution=instance.institution_id,
                object_type="archive.instance",
                object_id=instance.pk,
                detail={"alert": open_alert.pk, "good_copies": good, "required": need.copies},
            )


# Location health -------------------------------------------------------------------


def do_record_location_health(location_id: Any, *, healthy: bool, error: str = "") -> bool:
    """Record a location's probe; returns whether its health changed (audited when it did)."""
    with transaction.atomic():
        location = StorageLocation.objects.select_for_update().get(pk=location_id)
        changed = location.healthy != healthy
        location.healthy, location.checked_at, location.last_error = healthy, timezone.now(), error[:300]
        location.save(update_fields=["healthy", "checked_at", "last_error"])
        if changed:
            audit.record(
                "archive.location.health",
                actor_label="probe",
                object_type="archive.storagelocation",
                object_id=location.pk,
                outcome="success" if healthy else "failure",
                detail={"name": location.name, "healthy": healthy, "error": error[:300]},
            )
    if changed:
        locations.forget()
    return changed


def do_save_storage_location(location: StorageLocation, *, acting_user: Any) -> StorageLocation:
    """Add or change a storage location (the platform administrator's, audited)."""
    if location.kind == StorageLocation.Kind.FILESYSTEM and not location.path:
        raise ValueError("a file system location needs its folder")
    if location.kind == StorageLocation.Kind.S3 and not location.bucket:
        raise ValueError("an S3 location needs its bucket")
    with transaction.atomic():
        created = location._state.adding
        location.save()
        audit.record(
            "archive.location.save",
            actor=acting_user,
            object_type="archive.storagelocation",
            object_id=location.pk,
            detail={
                "name": location.name,
                "kind": location.kind,
                "site": location.site,
                "tier": location.tier,
                "cost_per_gb_month": str(location.cost_per_gb_month),
                "created": created,
            },
        )
    transaction.on_commit(locations.forget)
    return location
