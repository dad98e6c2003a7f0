"""Copies of every object across storage locations: ingest's copy, replication, failover reads, fixity.

Two sites on the file system here; tests/archive/test_sites.py runs the same
against two Ceph RADOS Gateways.
"""

from __future__ import annotations

import hashlib
import io
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.apps import apps as global_apps
from django.core.management import call_command
from django.db import connection

from archive.copies import locations
from archive.copies.actions import do_save_copy_policy
from archive.copies.locations import ensure_default_location, reader
from archive.copies.pages import monthly_cost
from archive.copies.tasks import scrub_copies, sweep_replication
from archive.ingest import store_instance
from archive.models import CopyAlert, Instance, LifecycleRule, ObjectCopy, StorageLocation
from archive.retrieve import read_object
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import make_ct, write
from tests.conftest import web_client


@pytest.fixture
def sites(storage_dir, tmp_path, db):
    """The default location at site A (``storage_dir``) and a second file system location at site B."""
    default = ensure_default_location()
    StorageLocation.objects.filter(pk=default.pk).update(site="site-a")
    second = StorageLocation.objects.create(
        name="site-b", kind="filesystem", path=str(tmp_path / "site-b"), site="site-b", read_rank=20
    )
    locations.forget()
    return storage_dir, tmp_path / "site-b", second


def ingest(tmp_path: Path, institution, count: int = 2) -> list[Instance]:
    study = make_ct().StudyInstanceUID
    stored = []
    for index in range(count):
        ds = make_ct(study_uid=study, patient_name="张三", charset="ISO_IR 192", instance_number=index + 1, seed=index)
        stored.append(store_instance(write(ds, tmp_path / f"in-{index}.dcm"), institution=institution).instance)
    return stored


def test_ingest_records_its_copy_in_the_default_location_with_the_objects_sha256(tenants, sites, tmp_path):
    root, _, _ = sites
    (instance,) = ingest(tmp_path, tenants.a.institution, 1)
    (copy,) = ObjectCopy.objects.filter(instance=instance)
    stored = (root / instance.storage_key).read_bytes()
    assert copy.location.is_default and copy.status == "good"
    assert (copy.key, copy.size, copy.sha256) == (instance.storage_key, len(stored), hashlib.sha256(stored).hexdigest())
    assert copy.written_at is not None and copy.verified_at is None


def test_objects_archived_before_copies_existed_get_one_copy_in_the_default_location(tenants, sites, tmp_path):
    from importlib import import_module

    instances = ingest(tmp_path, tenants.a.institution, 2)
    ObjectCopy.objects.all().delete()
    migration = import_module("archive.migrations.0009_copies_of_archived_objects")
    editor = SimpleNamespace(connection=connection)  # all the data migration uses of a schema editor
    migration.forwards(global_apps, editor)
    migration.forwards(global_apps, editor)  # run twice: still one copy each
    copies = ObjectCopy.objects.order_by("key")
    assert [(c.instance_id, c.key, c.sha256) for c in copies] == sorted(
        ((i.pk, i.storage_key, i.sha256) for i in instances), key=lambda row: row[1]
    )
    assert {c.location.is_default for c in copies} == {True}


def test_new_objects_are_copied_to_the_policys_second_site_and_verified(tenants, sites, tmp_path, settings):
    root, second_root, second = sites
    admin = tenants.a.institution_admin
    do_save_copy_policy(tenants.a.institution, copies=2, sites=2, acting_user=admin)
    assert AuditEvent.objects.filter(action="archive.copy_policy.save", actor_id=admin.pk).count() == 1
    ours = ingest(tmp_path, tenants.a.institution, 2)
    theirs = ingest(tmp_path, tenants.b.institution, 1)  # the platform default: one copy
    assert sweep_replication() == 2
    assert sweep_replication() == 0  # nothing left to do: safe to run twice
    for instance in ours:
        copy = ObjectCopy.objects.get(instance=instance, location=second)
        assert copy.status == "good" and copy.verified_at is not None
        assert (second_root / instance.storage_key).read_bytes() == (root / instance.storage_key).read_bytes()
    assert not ObjectCopy.objects.filter(instance=theirs[0], location=second).exists()
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    assert sweep_replication() == 1
    with pytest.raises(ValueError):
        do_save_copy_policy(tenants.a.institution, copies=1, sites=2, acting_user=admin)


def test_a_read_uses_another_site_when_the_default_location_lost_the_object(tenants, sites, tmp_path, settings):
    root, _, _ = sites
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    (instance,) = ingest(tmp_path, tenants.a.institution, 1)
    sweep_replication()
    original = (root / instance.storage_key).read_bytes()
    (root / instance.storage_key).unlink()
    assert read_object(instance) == original
    assert reader().read_range(instance.storage_key, 10, 20) == original[10:30]
    (Path(sites[1]) / instance.storage_key).unlink()
    with pytest.raises(FileNotFoundError):
        read_object(instance)


def test_the_scrubber_finds_lost_and_corrupt_copies_repairs_them_and_clears_the_alert(
    tenants, sites, tmp_path, settings
):
    root, second_root, second = sites
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    lost, corrupt, intact = ingest(tmp_path, tenants.a.institution, 3)
    sweep_replication()
    originals = {i.pk: (root / i.storage_key).read_bytes() for i in (lost, corrupt, intact)}
    (root / lost.storage_key).unlink()
    damaged = bytearray(originals[corrupt.pk])
    damaged[-5] ^= 0xFF
    (second_root / corrupt.storage_key).write_bytes(bytes(damaged))

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exited:
        call_command("verify_archive", "--institution", "alpha", "--no-repair", stdout=out)
    assert exited.value.code == 1
    report = out.getvalue()
    assert f"MISSING primary {lost.storage_key}" in report
    assert f"CORRUPT site-b {corrupt.storage_key}" in report
    assert intact.storage_key not in report
    alerts = CopyAlert.objects.filter(cleared_at=None)
    assert {a.instance_id for a in alerts} == {lost.pk, corrupt.pk}
    assert {(a.good_copies, a.required) for a in alerts} == {(1, 2)}
    admin_page = web_client(tenants.a.institution_admin)
    page = admin_page.get("/archive/storage/").content.decode()
    assert 'id="copy-alerts"' in page and "2 objects have fewer good copies than the policy asks" in page
    assert "<title>Archive storage — Cloud PACS</title>" in page
    assert page.count('id="lifecycle-rules"') == 1

    settings.FIXITY_CYCLE_DAYS = 0  # every copy is due
    assert scrub_copies(max_seconds=30) == 6
    assert (root / lost.storage_key).read_bytes() == originals[lost.pk]
    assert (second_root / corrupt.storage_key).read_bytes() == originals[corrupt.pk]
    assert not CopyAlert.objects.filter(cleared_at=None).exists()
    assert CopyAlert.objects.filter(cleared_at__isnull=False).count() == 2
    assert AuditEvent.objects.filter(action="archive.copy_alert.raise").count() == 2
    assert AuditEvent.objects.filter(action="archive.copy_alert.clear").count() == 2
    assert set(ObjectCopy.objects.values_list("status", flat=True)) == {"good"}
    call_command("verify_archive", "--all", stdout=io.StringIO())  # no exit: all good
    assert 'id="copy-alerts-none"' in admin_page.get("/archive/storage/").content.decode()


def test_a_copy_bad_everywhere_keeps_its_alert_open(tenants, sites, tmp_path, settings):
    root, second_root, _ = sites
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    (instance,) = ingest(tmp_path, tenants.a.institution, 1)
    sweep_replication()
    (root / instance.storage_key).write_bytes(b"not the object")
    (second_root / instance.storage_key).unlink()
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("verify_archive", "--study", instance.series.study.study_instance_uid, stdout=out)
    assert "(repaired)" not in out.getvalue()
    alert = CopyAlert.objects.get(instance=instance)
    assert alert.cleared_at is None and alert.good_copies == 0


def test_the_scrubber_keeps_to_its_read_rate(tenants, sites, tmp_path, settings):
    ingest(tmp_path, tenants.a.institution, 3)
    settings.FIXITY_CYCLE_DAYS = 0
    size = Instance.objects.first().size
    settings.SCRUB_MB_PER_SECOND = size / 1_000_000 / 0.5  # one object per half second
    assert scrub_copies(max_seconds=0.3) == 1
    assert ObjectCopy.objects.filter(verified_at__isnull=False).count() == 1


def test_administrators_see_storage_per_tier_and_site_with_its_monthly_cost_and_set_the_policy(
    tenants, sites, tmp_path
):
    _, _, second = sites
    # Prices that make kilobytes visible.
    StorageLocation.objects.filter(is_default=True).update(cost_per_gb_month="90000")
    StorageLocation.objects.filter(pk=second.pk).update(tier="nearline", cost_per_gb_month="45000")
    admin = web_client(tenants.a.institution_admin)
    answer = admin.post("/archive/storage/", {"copies": "2", "sites": "2", "locations": [str(second.pk)]})
    assert answer.status_code == 302
    event = AuditEvent.objects.get(action="archive.copy_policy.save")
    assert event.detail["copies"] == 2 and event.detail["locations"] == ["site-b"]
    ingest(tmp_path, tenants.a.institution, 2)
    ingest(tmp_path, tenants.b.institution, 1)
    sweep_replication()
    page = admin.get("/archive/storage/").content.decode()
    size = sum(ObjectCopy.objects.filter(instance__institution=tenants.a.institution).values_list("size", flat=True))
    expected = monthly_cost(size // 2, Decimal(90000)) + monthly_cost(size // 2, Decimal(45000))
    assert "site-a" in page and "site-b" in page and "Nearline" in page and "Online" in page
    assert f'<th id="total-cost">{expected}</th>' in page and expected > 0
    assert page.count("<td>2</td>") == 2  # two objects at each site, none of the other institution's
    assert admin.post("/archive/storage/", {"copies": "1", "sites": "3"}).status_code == 302
    assert AuditEvent.objects.filter(action="archive.copy_policy.save").count() == 1  # refused: more sites than copies
    assert web_client(tenants.a.radiologist).get("/archive/storage/").status_code == 404
    rule = {"name": "after five years", "target": str(second.pk), "min_age_days": "1825", "min_idle_days": ""}
    assert admin.post("/archive/storage/lifecycle/", rule).status_code == 302
    saved = LifecycleRule.objects.get(institution=tenants.a.institution)
    assert (saved.name, saved.target_id, saved.min_age_days, saved.min_idle_days) == (
        rule["name"],
        second.pk,
        1825,
        None,
    )
    assert "after five years" in admin.get("/archive/storage/").content.decode()


def test_a_study_shows_where_its_copies_are_and_only_to_who_may_open_it(tenants, sites, tmp_path, settings):
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    instances = ingest(tmp_path, tenants.a.institution, 2)
    sweep_replication()
    study = instances[0].series.study
    page = web_client(tenants.a.radiologist).get(f"/archive/studies/{study.pk}/copies/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "primary" in text and "site-b" in text and "2 good copies in 2 sites" in text
    assert text.count("<td>2</td>") >= 4  # both objects, both good, at each location
    assert web_client(tenants.c.radiologist).get(f"/archive/studies/{study.pk}/copies/").status_code == 404


def test_the_platform_administrator_sees_location_health_backlog_and_scrub_progress(
    tenants, sites, tmp_path, settings, platform_admin
):
    from archive.copies.tasks import check_locations

    _, second_root, second = sites
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    ingest(tmp_path, tenants.a.institution, 2)
    assert check_locations() == 0
    locations.places()  # the second site's backend exists; then its disk goes away
    second_root.rename(second_root.with_name("gone"))
    second_root.write_bytes(b"not a folder")
    assert check_locations() == 1
    assert not StorageLocation.objects.get(pk=second.pk).healthy
    assert AuditEvent.objects.filter(action="archive.location.health", outcome="failure").count() == 1
    page = web_client(platform_admin).get("/archive/locations/").content.decode()
    assert "Replication backlog: 2 objects" in page and "unhealthy" in page and "0.0%" in page
    assert sweep_replication() == 0  # nothing is copied to an unhealthy location
    assert web_client(tenants.a.institution_admin).get("/archive/locations/").status_code == 404


def test_a_lifecycle_rule_moves_a_study_to_nearline_and_a_read_recalls_it(
    tenants, sites, tmp_path, settings, django_capture_on_commit_callbacks
):
    from archive.copies.lifecycle import do_apply_lifecycle_rules, do_save_lifecycle_rule, dry_run
    from pacs_cloud.celery import app as celery_app
    from tests.conftest import api_client

    root, second_root, second = sites
    StorageLocation.objects.filter(is_default=True).update(cost_per_gb_month="90000")
    StorageLocation.objects.filter(pk=second.pk).update(tier="nearline", cost_per_gb_month="9000")
    second.refresh_from_db()
    admin = tenants.a.institution_admin
    with pytest.raises(ValueError):
        do_save_lifecycle_rule(
            tenants.a.institution,
            name="bad",
            target=StorageLocation.objects.get(is_default=True),
            min_age_days=0,
            min_idle_days=None,
            acting_user=admin,
        )
    rule = do_save_lifecycle_rule(
        tenants.a.institution, name="after a year", target=second, min_age_days=0, min_idle_days=0, acting_user=admin
    )
    assert AuditEvent.objects.filter(action="archive.lifecycle_rule.save", actor_id=admin.pk).count() == 1
    instances = ingest(tmp_path, tenants.a.institution, 2)
    ingest(tmp_path, tenants.b.institution, 1)  # another institution's study stays where it is
    size = sum(i.size for i in instances)
    plan = dry_run(rule)
    assert (plan.studies, plan.size) == (1, size)
    assert plan.cost_before == monthly_cost(size, Decimal(90000)) and plan.cost_after == monthly_cost(
        size, Decimal(9000)
    )
    assert plan.cost_after < plan.cost_before
    page = web_client(admin).get("/archive/storage/").content.decode()
    assert "after a year" in page and f"<td>{plan.cost_before}</td><td>{plan.cost_after}</td>" in page

    assert do_apply_lifecycle_rules() == 1
    for instance in instances:
        assert not (root / instance.storage_key).exists()
        copy = ObjectCopy.objects.get(instance=instance)
        assert copy.location_id == second.pk and copy.status == "good" and copy.verified_at is not None
    transition = AuditEvent.objects.get(action="archive.study.transition")
    assert transition.detail["to"] == "site-b" and transition.detail["objects"] == 2
    assert do_apply_lifecycle_rules() == 0  # nothing left online to move

    # A radiologist opens it: served from nearline at once, recalled online meanwhile.
    study = instances[0].series.study
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            answer = api_client(tenants.a.radiologist).get(f"/dicomweb/studies/{study.study_instance_uid}")
            assert answer.status_code == 200
            b"".join(answer.streaming_content)
    finally:
        celery_app.conf.task_always_eager = False
    for instance in instances:
        assert (root / instance.storage_key).read_bytes() == (second_root / instance.storage_key).read_bytes()
    assert AuditEvent.objects.get(action="archive.study.recall").detail["objects"] == 2
    assert do_apply_lifecycle_rules() == 0  # recalled studies stay online for RECALL_KEEP_DAYS
    settings.RECALL_KEEP_DAYS = 0
    assert do_apply_lifecycle_rules() == 1


def test_a_transition_never_removes_the_last_verified_copy(tenants, sites, tmp_path):
    from archive.copies.lifecycle import do_apply_lifecycle_rules, do_save_lifecycle_rule

    root, second_root, second = sites
    StorageLocation.objects.filter(pk=second.pk).update(tier="nearline")
    second.refresh_from_db()
    do_save_lifecycle_rule(
        tenants.a.institution,
        name="soon",
        target=second,
        min_age_days=0,
        min_idle_days=None,
        acting_user=tenants.a.institution_admin,
    )
    (instance,) = ingest(tmp_path, tenants.a.institution, 1)
    locations.places()
    second_root.rename(second_root.with_name("gone"))
    second_root.write_bytes(b"the nearline disk is not there")  # every write to it fails
    assert do_apply_lifecycle_rules() == 0
    assert (root / instance.storage_key).exists()
    assert list(ObjectCopy.objects.filter(instance=instance).values_list("location__is_default", flat=True)) == [True]


def test_the_platform_administrator_adds_a_location_through_the_admin_audited(
    storage_dir, tmp_path, platform_admin, db
):
    admin = web_client(platform_admin)
    form = {
        "name": "nearline-east",
        "kind": "filesystem",
        "path": str(tmp_path / "nearline"),
        "site": "east",
        "tier": "nearline",
        "cost_per_gb_month": "0.01",
        "restore_minutes": "300",
        "read_rank": "50",
        "bucket": "",
        "prefix": "",
        "endpoint_url": "",
        "storage_class": "",
    }
    assert admin.post("/admin/archive/storagelocation/add/", form).status_code == 302
    event = AuditEvent.objects.get(action="archive.location.save")
    assert event.actor_id == platform_admin.pk and event.detail["tier"] == "nearline"
    assert "nearline-east" in [p.name for p in locations.places(fresh=True)]
