"""The archive tier: a study whose objects need a restore before a read, read by the viewer, WADO-RS and C-MOVE.

Ceph's RADOS Gateway accepts the GLACIER storage class but serves such objects
at once: it does not emulate a restore before a read. The archive location
here is therefore moto's S3 server (a separate process-level HTTP server, not
a mock of our client), which refuses a GET of a GLACIER object until it was
restored, as AWS does. Everything else in the archive tests uses real RGW.
"""

from __future__ import annotations

import io
import os

import boto3
import pydicom
import pytest

from archive.copies import locations
from archive.copies.actions import do_verify_copy
from archive.copies.lifecycle import do_apply_lifecycle_rules, do_save_lifecycle_rule
from archive.copies.locations import ensure_default_location
from archive.copies.tasks import finish_restores
from archive.dimse import start_server
from archive.models import DicomNode, ObjectCopy, StorageLocation, StudyAccess
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import dcmtk, make_ct, write
from tests.archive.test_dimse import Storescp
from tests.conftest import api_client, free_port, web_client

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture(scope="module")
def glacier_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def archived(tenants, transactional_db, storage_dir, tmp_path, glacier_endpoint, monkeypatch):
    """Two CT images of 张三 at Alpha, moved by a lifecycle rule to a GLACIER bucket (the archive tier)."""
    for name, value in (("AWS_ACCESS_KEY_ID", "archive"), ("AWS_SECRET_ACCESS_KEY", "archive-secret")):
        if not os.environ.get(name):
            monkeypatch.setenv(name, value)  # moto takes any credentials; CI's are Ceph's
    ensure_default_location()
    vault = StorageLocation.objects.create(
        name="vault",
        kind="s3",
        bucket=f"vault-{free_port()}",
        endpoint_url=glacier_endpoint,
        storage_class="GLACIER",
        site="vault",
        tier="archive",
        restore_minutes=240,
        read_rank=90,
    )
    locations.forget()
    from archive.ingest import store_instance

    study_uid = make_ct().StudyInstanceUID
    instances, files = [], []
    for index in range(2):
        ds = make_ct(
            study_uid=study_uid, patient_name="张三", charset="ISO_IR 192", instance_number=index + 1, seed=index
        )
        instance = store_instance(write(ds, tmp_path / f"in-{index}.dcm"), institution=tenants.a.institution).instance
        instances.append(instance)
        files.append((storage_dir / instance.storage_key).read_bytes())  # as archived
    do_save_lifecycle_rule(
        tenants.a.institution,
        name="cold after a year",
        target=vault,
        min_age_days=0,
        min_idle_days=0,
        acting_user=tenants.a.institution_admin,
    )
    assert do_apply_lifecycle_rules() == 1
    return vault, instances, files


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_a_lifecycle_rule_moves_a_study_into_the_archive_tier_verified_without_reading_it(
    archived, storage_dir, glacier_endpoint
):
    vault, instances, _ = archived
    for instance in instances:
        assert not (storage_dir / instance.storage_key).exists()
        (copy,) = ObjectCopy.objects.filter(instance=instance)
        assert copy.location_id == vault.pk and copy.status == "good" and copy.verified_at is not None
        head = _s3(glacier_endpoint).head_object(Bucket=vault.bucket, Key=instance.storage_key)
        assert head["StorageClass"] == "GLACIER" and head["Metadata"]["sha256"] == instance.sha256
        # The scrubber checks an archived copy by the checksum the store recorded, not by a read it refuses.
        assert do_verify_copy(copy.pk).status == "good"


def test_reads_of_an_archived_study_start_one_restore_and_say_when_to_come_back(
    archived, tenants, glacier_endpoint, storage_dir, tmp_path
):
    vault, instances, files = archived
    study = instances[0].series.study
    radiologist = tenants.a.radiologist
    url = f"/dicomweb/studies/{study.study_instance_uid}"

    answer = api_client(radiologist).get(url)
    assert answer.status_code == 503
    assert 239 * 60 <= int(answer["Retry-After"]) <= 240 * 60
    assert "retrieving from the archive, about 240 minutes" in answer.json()["detail"]
    frames = api_client(radiologist).get(
        f"{url}/series/{instances[0].series.series_instance_uid}/instances/{instances[0].sop_instance_uid}/frames/1",
        HTTP_ACCEPT="multipart/related; type=application/octet-stream",
    )
    assert frames.status_code == 503 and int(frames["Retry-After"]) > 60
    restore = AuditEvent.objects.get(action="archive.study.restore")  # one restore, however many reads
    assert restore.actor_id == radiologist.pk and restore.detail["objects"] == 2
    for instance in instances:
        head = _s3(glacier_endpoint).head_object(Bucket=vault.bucket, Key=instance.storage_key)
        assert "ongoing-request" in head["Restore"]

    page = web_client(radiologist).get(f"/viewer/studies/{study.pk}/").content.decode()
    assert "retrieving from the archive, about 240 minutes" in page
    assert '<meta http-equiv="refresh" content="60">' in page and "张三" in page

    # Another hospital's user learns nothing, not even that the study waits for a restore.
    assert api_client(tenants.b.radiologist).get(url).status_code == 404
    assert web_client(tenants.b.radiologist).get(f"/viewer/studies/{study.pk}/").status_code == 404

    # The store finished the restore: the sweep copies the study back online, checked, and reads work again.
    assert finish_restores() == 1
    assert StudyAccess.objects.get(study=study).restore_requested_at is None
    for instance, original in zip(instances, files, strict=True):
        assert (storage_dir / instance.storage_key).read_bytes() == original
        tiers = set(
            ObjectCopy.objects.filter(instance=instance, status="good").values_list("location__tier", flat=True)
        )
        assert tiers == {"online", "archive"}
    answer = api_client(radiologist).get(f"{url}/series/{instances[0].series.series_instance_uid}/instances/"
                                         f"{instances[0].sop_instance_uid}", HTTP_ACCEPT="application/dicom")  # fmt: skip
    assert answer.status_code == 200
    assert pydicom.dcmread(io.BytesIO(b"".join(answer.streaming_content))).SOPInstanceUID == (
        instances[0].sop_instance_uid
    )
    assert AuditEvent.objects.get(action="archive.study.recall").detail["objects"] == 2
    assert "retrieving" not in web_client(radiologist).get(f"/viewer/studies/{study.pk}/").content.decode()
    assert finish_restores() == 0


def test_a_move_of_an_archived_study_fails_with_the_wait_or_waits_for_the_restore(
    archived, tenants, tmp_path, settings
):
    _, instances, _ = archived
    study = instances[0].series.study
    destination_port = free_port()
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_CT", host="127.0.0.1")
    DicomNode.objects.create(
        institution=tenants.a.institution, ae_title="ALPHA_WS", host="127.0.0.1", port=destination_port
    )
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port)
    receiver = Storescp(destination_port, tmp_path / "moved")
    move = (
        "movescu", "-d", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-aem", "ALPHA_WS",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_instance_uid}", "127.0.0.1", str(port),
    )  # fmt: skip
    try:
        refused = dcmtk(*move)
        assert refused.returncode != 0 or "Failed: UnableToProcess" in refused.stderr
        assert "archived; retry in 240 min" in refused.stdout + refused.stderr
        assert receiver.files() == []
        # Configured to wait: the move waits for the restore (the store finished it) and then sends the study.
        settings.RESTORE_RETRIEVE_WAIT_SECONDS = 30
        moved = dcmtk(*move)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        received = sorted(pydicom.dcmread(p).SOPInstanceUID for p in receiver.files())
        assert received == sorted(i.sop_instance_uid for i in instances)
    finally:
        receiver.stop()
        server.shutdown()
    assert StudyAccess.objects.get(study=study).restore_requested_at is None
    # Only the move that sent something disclosed the study.
    assert AuditEvent.objects.filter(action="archive.study.retrieve", actor="ALPHA_CT").count() == 1


def test_the_priors_prefetch_starts_the_restore_of_an_archived_prior(archived, tenants, tmp_path):
    from archive.ingest import store_instance
    from viewer.prefetch import warm_priors

    _, instances, _ = archived
    prior = instances[0].series.study
    ds = make_ct(patient_name="张三", charset="ISO_IR 192", study_date="20260301", accession="ACC2")
    current = store_instance(write(ds, tmp_path / "current.dcm"), institution=tenants.a.institution).instance
    assert warm_priors(current.series.study_id) == {"studies": 1, "series": 0, "restoring": 1}
    restore = AuditEvent.objects.get(action="archive.study.restore")
    assert restore.object_id == str(prior.pk) and restore.actor == "lifecycle"
    assert StudyAccess.objects.get(study=prior).restore_ready_by is not None
