"""Copies the policy asks for beyond the sweep's day: objects archived before a policy change, and replicas
the object store makes by itself (Ceph multisite, S3 cross-region replication), counted once verified."""

from __future__ import annotations

import datetime as dt
import shutil

from django.utils import timezone

from archive.copies import locations
from archive.copies.actions import do_save_copy_policy
from archive.copies.tasks import sweep_replication
from archive.models import Instance, ObjectCopy, StorageLocation
from pacs_cloud.celery import app as celery_app
from tests.archive.test_copies import ingest, sites  # noqa: F401  (fixture)


def test_raising_the_policy_copies_objects_archived_long_before(
    tenants,
    sites,  # noqa: F811  (the fixture imported above)
    tmp_path,
    django_capture_on_commit_callbacks,
):
    root, second_root, second = sites
    old = ingest(tmp_path, tenants.a.institution, 2)
    Instance.objects.filter(pk__in=[i.pk for i in old]).update(received_at=timezone.now() - dt.timedelta(days=400))
    other = ingest(tmp_path, tenants.b.institution, 1)
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            do_save_copy_policy(tenants.a.institution, copies=2, sites=2, acting_user=tenants.a.institution_admin)
    finally:
        celery_app.conf.task_always_eager = False
    assert len(callbacks) == 1  # the backfill, run here as a worker would
    for instance in old:
        copy = ObjectCopy.objects.get(instance=instance, location=second)
        assert copy.status == "good" and copy.verified_at is not None
        assert (second_root / instance.storage_key).read_bytes() == (root / instance.storage_key).read_bytes()
    assert not ObjectCopy.objects.filter(instance=other[0], location=second).exists()  # another policy


def test_a_replica_the_store_makes_itself_counts_once_verified_and_is_never_written_by_us(
    tenants,
    sites,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    root, second_root, second = sites
    default = StorageLocation.objects.get(is_default=True)
    # site-b is where the store replicates the default location's objects by itself.
    StorageLocation.objects.filter(pk=second.pk).update(replica_of=default)
    locations.forget()
    do_save_copy_policy(tenants.a.institution, copies=2, sites=2, acting_user=tenants.a.institution_admin)
    first, second_instance = ingest(tmp_path, tenants.a.institution, 2)

    assert sweep_replication() == 0  # not replicated by the store yet: nothing written, nothing counted
    assert not (second_root / first.storage_key).exists()
    assert not ObjectCopy.objects.filter(location=second).exists()

    # The store's replication arrives: one object intact, the other damaged on the way.
    for instance in (first, second_instance):
        (second_root / instance.storage_key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / instance.storage_key, second_root / instance.storage_key)
    damaged = bytearray((second_root / second_instance.storage_key).read_bytes())
    damaged[-1] ^= 0xFF
    (second_root / second_instance.storage_key).write_bytes(bytes(damaged))

    assert sweep_replication() == 0  # counting is not copying
    counted = ObjectCopy.objects.get(instance=first, location=second)
    assert counted.status == "good" and counted.verified_at is not None and counted.sha256 == first.sha256
    assert ObjectCopy.objects.get(instance=second_instance, location=second).status == "corrupt"
    assert (second_root / second_instance.storage_key).read_bytes() == bytes(damaged)  # left to the store
