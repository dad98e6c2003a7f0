"""Lifecycle rules: studies move from the online default location to cheaper tiers, and back when read.

A transition copies each object to the rule's target, reads the new copy
back and compares its SHA-256, and only then removes the copy in the default
location, never the last verified one. A read of a study without online
copies (viewer, WADO-RS) recalls it: its objects are copied back to the
default location (served from the nearline copy meanwhile) and stay there
``RECALL_KEEP_DAYS`` after the last read before a rule may move them again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.models import Institution

from ..models import Instance, LifecycleRule, ObjectCopy, StorageLocation, Study, StudyAccess
from . import actions, locations
from .locations import Place

log = logging.getLogger(__name__)

GB = Decimal(1024**3)


def do_save_lifecycle_rule(
    institution: Institution,
    *,
    name: str,
    target: StorageLocation,
    min_age_days: int,
    min_idle_days: int | None,
    acting_user: Any,
) -> LifecycleRule:
    """Add or change a rule (audited); its target must be a tier below online."""
    if target.tier == StorageLocation.Tier.ONLINE or target.is_default:
        raise ValueError("a lifecycle rule moves studies to a nearline or archive location")
    if not name.strip():
        raise ValueError("a rule needs a name")
    with transaction.atomic():
        rule, created = LifecycleRule.objects.update_or_create(
            institution=institution,
            name=name.strip()[:100],
            defaults={"target": target, "min_age_days": min_age_days, "min_idle_days": min_idle_days},
        )
        audit.record(
            "archive.lifecycle_rule.save",
            actor=acting_user,
            institution=institution,
            object_type="archive.lifecyclerule",
            object_id=rule.pk,
            detail={
                "name": rule.name,
                "target": target.name,
                "min_age_days": min_age_days,
                "min_idle_days": min_idle_days,
                "created": created,
            },
        )
    return rule


def candidates(rule: LifecycleRule, *, now: dt.datetime | None = None) -> QuerySet[Study]:
    """The rule's institution's studies it would move now: old and idle enough, still with online copies."""
    now = now or timezone.now()
    default = locations.default_location_id()
    studies = Study.objects.filter(
        institution_id=rule.institution_id,
        received_at__lte=now - dt.timedelta(days=rule.min_age_days),
        series__instances__copies__location_id=default,
    )
    keep = now - dt.timedelta(days=settings.RECALL_KEEP_DAYS)
    studies = studies.exclude(access_record__recalled_at__gt=keep)
    if rule.min_idle_days is not None:
        idle = now - dt.timedelta(days=rule.min_idle_days)
        studies = studies.filter(Q(access_record__isnull=True) | Q(access_record__last_read_at__lte=idle))
    return studies.distinct()


@dataclass
class DryRun:
    rule: LifecycleRule
    studies: int
    size: int
    cost_before: Decimal
    cost_after: Decimal


def dry_run(rule: LifecycleRule) -> DryRun:
    """What the rule would move now, and the monthly cost of those objects before and after."""
    default = StorageLocation.objects.get(pk=locations.default_location_id())
    studies = candidates(rule)
    size = (
        ObjectCopy.objects.filter(location_id=default.pk, instance__series__study__in=studies.values("pk")).aggregate(
            total=Sum("size")
        )["total"]
        or 0
    )
    count = studies.count()
    return DryRun(
        rule,
        count,
        size,
        (Decimal(size) / GB * default.cost_per_gb_month).quantize(Decimal("0.01")),
        (Decimal(size) / GB * rule.target.cost_per_gb_month).quantize(Decimal("0.01")),
    )


def do_transition_study(study: Study, target: StorageLocation, *, rule: LifecycleRule | None = None) -> int:
    """Move a study's objects from the default location to ``target``; returns the objects moved (audited)."""
    default = locations.place(locations.default_location_id())
    destination = locations.place(target.pk)
    moved = 0
    for instance in Instance.objects.filter(series__study=study).order_by("pk"):
        if _move(instance, default, destination):
            moved += 1
    audit.record(
        "archive.study.transition",
        actor_label="lifecycle",
        institution=study.institution_id,
        object_type="archive.study",
        object_id=study.pk,
        detail={
            "rule": rule.name if rule else "",
            "from": default.name,
            "to": target.name,
            "tier": target.tier,
            "objects": moved,
        },
    )
    return moved


def _move(instance: Instance, source: Place, target: Place) -> bool:
    old = ObjectCopy.objects.filter(instance=instance, location_id=source.id).first()
    if old is None:
        return False
    if not _verified_copy_at(instance, target):
        good = actions._good_places(instance)
        with actions._verified_source(instance, good) as path:
            if path is None or not actions._write_copy(instance, target, path):
                log.error("could not move %s to %s: no verified copy written", instance.storage_key, target.name)
                return False
    with transaction.atomic():
        # Never the last verified copy: another one, verified, must remain.
        others = ObjectCopy.objects.select_for_update().filter(
            instance=instance, status=ObjectCopy.Status.GOOD, verified_at__isnull=False
        )
        if not others.exclude(pk=old.pk).exists():
            return False
        old.delete()
    storage: Any = source.storage
    try:
        storage.delete(instance.storage_key)  # the local cache too, when there is one
    except Exception:  # the row is gone: the object is only an orphan now
        log.warning("could not delete %s from %s", instance.storage_key, source.name, exc_info=True)
    return True


def _verified_copy_at(instance: Instance, place: Place) -> bool:
    copy = ObjectCopy.objects.filter(instance=instance, location_id=place.id, status=ObjectCopy.Status.GOOD).first()
    if copy is None:
        return False
    digest, size = locations.fixity_of(place, actions._checked_storage(place, copy.key), copy.key)
    if digest != instance.sha256:
        ObjectCopy.objects.filter(pk=copy.pk).update(status=ObjectCopy.Status.CORRUPT, verified_at=timezone.now())
        return False
    ObjectCopy.objects.filter(pk=copy.pk).update(verified_at=timezone.now())
    return True


def do_apply_lifecycle_rules(*, limit: int = 100) -> int:
    """Apply every enabled rule to the studies it selects; returns the studies moved."""
    moved = 0
    for rule in LifecycleRule.objects.filter(enabled=True).select_related("target"):
        for study in candidates(rule)[:limit]:
            if do_transition_study(study, rule.target, rule=rule):
                moved += 1
    return moved


# Reads and recalls -----------------------------------------------------------------

_noted: dict[Any, float] = {}
_NOTE_SECONDS = 300.0  # a study's reads are recorded at most this often per process


def note_study_read(study_pk: Any) -> bool:
    """Record a read of the study; recall it when it has objects without an online copy.

    Returns whether a recall was started. Cheap when called again and again
    (every frame of a series): at most one check per study per few minutes.
    """
    now = time.monotonic()
    if _noted.get(study_pk, 0) > now:
        return False
    if len(_noted) > 10_000:
        _noted.clear()
    _noted[study_pk] = now + _NOTE_SECONDS
    StudyAccess.objects.update_or_create(study_id=study_pk, defaults={"last_read_at": timezone.now()})
    if not needs_recall(study_pk):
        return False
    from .tasks import recall_study

    transaction.on_commit(lambda: recall_study.delay(str(study_pk)))
    return True


def needs_recall(study_pk: Any) -> bool:
    """Whether some object of the study has no copy in the default (online) location."""
    default = locations.default_location_id()
    return (
        Instance.objects.filter(series__study_id=study_pk)
        .exclude(copies__location_id=default, copies__status=ObjectCopy.Status.GOOD)
        .exists()
    )


def do_recall_study(study_pk: Any) -> int:
    """Copy a study's objects back to the default location (verified); returns the copies made (audited)."""
    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return 0
    default = locations.place(locations.default_location_id())
    made = 0
    for instance in Instance.objects.filter(series__study=study).exclude(
        copies__location_id=default.id, copies__status=ObjectCopy.Status.GOOD
    ):
        with actions._verified_source(instance, actions._good_places(instance)) as path:
            if path is not None and actions._write_copy(instance, default, path):
                made += 1
    StudyAccess.objects.update_or_create(study=study, defaults={"recalled_at": timezone.now()})
    from .restore import pending_restore

    pending_restore(study)  # objects only in the archive tier: the store restores them first
    audit.record(
        "archive.study.recall",
        actor_label="lifecycle",
        institution=study.institution_id,
        object_type="archive.study",
        object_id=study.pk,
        detail={"to": default.name, "objects": made},
    )
    return made
