"""Two sites, each a real Ceph RADOS Gateway: replication, repairs, and reads while one site is down.

``.ci/run`` starts the second Ceph (``S3_SECOND_ENDPOINT_URL``, its state in
``S3_SECOND_CEPH_DIR``); this module kills that site's gateway process and
starts it again, so every test that uses it lives here (one xdist worker runs
a whole file).
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from archive import storage as storage_module
from archive.copies import locations
from archive.copies.locations import ensure_default_location
from archive.copies.tasks import scrub_copies, sweep_replication
from archive.ingest import store_instance
from archive.models import CopyAlert, ObjectCopy, StorageLocation
from archive.storage import S3Storage
from archive.tasks import copy_to_object_store, evict_cached_copies
from pacs_cloud.authentication import issue_token
from tests.archive.conftest import make_ct, write
from tests.conftest import PASSWORD

FIRST = os.environ.get("S3_ENDPOINT_URL", "")
SECOND = os.environ.get("S3_SECOND_ENDPOINT_URL", "")
SECOND_DIR = os.environ.get("S3_SECOND_CEPH_DIR", "")
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "radosgw.sh"

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(
        not (FIRST and SECOND and SECOND_DIR),
        reason="needs two Ceph RADOS Gateways: S3_ENDPOINT_URL, S3_SECOND_ENDPOINT_URL and S3_SECOND_CEPH_DIR "
        "(.ci/run starts both)",
    ),
]


def gateway(command: str) -> None:
    subprocess.run(
        ["bash", str(SCRIPT), command], env={**os.environ, "CEPH_DIR": SECOND_DIR}, check=True, capture_output=True
    )


def _empty(store: S3Storage) -> None:
    # The buckets stay (CI's Ceph is wiped at the end): a gateway just restarted
    # takes some twenty seconds to delete a bucket.
    for item in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        store.client.delete_object(Bucket=store.bucket, Key=item["Key"])


@pytest.fixture
def two_sites(tenants, tmp_path, settings):
    """The default location (``s3://`` with its local cache) on the second gateway, at site "west";
    a copy location on the first gateway, at site "east". The policy asks for two copies in two sites."""
    settings.S3_ENDPOINT_URL = SECOND
    settings.STORAGE_URL = f"s3://west-{uuid.uuid4().hex[:10]}/pacs"
    settings.STORAGE_CACHE_DIR = str(tmp_path / "cache")
    settings.DATA_DIR = tmp_path
    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    storage_module.storage_for.cache_clear()
    default = ensure_default_location()
    StorageLocation.objects.filter(pk=default.pk).update(site="west")
    east = StorageLocation.objects.create(
        name="east", kind="s3", bucket=f"east-{uuid.uuid4().hex[:10]}", endpoint_url=FIRST, site="east", read_rank=20
    )
    locations.forget()
    west_store = storage_module.get_storage().store  # type: ignore[attr-defined]
    yield west_store, locations.backend(east)
    locations.forget()
    _empty(west_store)
    _empty(locations.backend(east))  # type: ignore[arg-type]
    storage_module.storage_for.cache_clear()


def archive_study(tenants, tmp_path, count: int = 2):
    """A study ingested, copied to the default location's object store and to the other site, cache evicted."""
    study = make_ct().StudyInstanceUID
    instances = []
    for index in range(count):
        ds = make_ct(study_uid=study, patient_name="张三", charset="ISO_IR 192", instance_number=index + 1, seed=index)
        instances.append(
            store_instance(write(ds, tmp_path / f"{index}.dcm"), institution=tenants.a.institution).instance
        )
    copy_to_object_store([str(i.pk) for i in instances])
    assert sweep_replication() == count
    from django.conf import settings

    settings.STORAGE_CACHE_RETENTION_HOURS = 0
    assert evict_cached_copies() == count
    return instances


def test_lost_and_corrupt_copies_at_one_site_are_repaired_from_the_other(
    transactional_db, tenants, two_sites, tmp_path, settings
):
    west, east = two_sites
    lost, corrupt = archive_study(tenants, tmp_path)
    original = {i.pk: east.open(i.storage_key).read() for i in (lost, corrupt)}
    west.delete(lost.storage_key)
    east.client.put_object(Bucket=east.bucket, Key=corrupt.storage_key, Body=b"bit rot")
    settings.FIXITY_CYCLE_DAYS = 0
    assert scrub_copies(max_seconds=60) == 4
    assert hashlib.sha256(west.open(lost.storage_key).read()).hexdigest() == lost.sha256
    assert east.open(corrupt.storage_key).read() == original[corrupt.pk]
    assert CopyAlert.objects.filter(cleared_at__isnull=False).count() == 2
    assert not CopyAlert.objects.filter(cleared_at=None).exists()
    assert set(ObjectCopy.objects.values_list("status", flat=True)) == {"good"}


def multipart_objects(response: requests.Response) -> list[bytes]:
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + response.headers["Content-Type"].encode() + b"\r\n\r\n" + response.content
    )
    return [part.get_payload(decode=True) for part in message.get_payload()]


def test_a_radiologist_keeps_reading_from_the_other_site_while_the_default_sites_gateway_is_dead(
    live_url, tenants, two_sites, tmp_path
):
    instances = archive_study(tenants, tmp_path)
    study = instances[0].series.study
    auth = (tenants.a.radiologist.username, PASSWORD)
    gateway("rgw-kill")
    try:
        answer = requests.get(f"{live_url}/dicomweb/studies/{study.study_instance_uid}", auth=auth, timeout=60)
        assert answer.status_code == 200
        digests = sorted(hashlib.sha256(body).hexdigest() for body in multipart_objects(answer))
        assert digests == sorted(i.sha256 for i in instances)
        for instance in instances:
            series = instance.series
            frame = requests.get(
                f"{live_url}/dicomweb/studies/{study.study_instance_uid}/series/{series.series_instance_uid}"
                f"/instances/{instance.sop_instance_uid}/frames/1/rendered",
                auth=auth,
                timeout=60,
            )
            assert frame.status_code == 200 and frame.headers["Content-Type"] == "image/jpeg"
        # The viewer's manifest of the study (what the viewer page loads first) still answers.
        _, token = issue_token(tenants.a.radiologist, name="viewer")
        manifest = requests.get(
            f"{live_url}/api/v1/viewer/studies/{study.pk}/", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert manifest.status_code == 200
    finally:
        gateway("rgw-start")
