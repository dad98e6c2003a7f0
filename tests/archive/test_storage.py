"""Object storage: the key layout, and the same behaviour from the file system and a real S3 server."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import pytest

from archive import storage as storage_module
from archive.ingest import store_instance
from archive.models import Instance
from archive.storage import (
    ChecksumMismatch,
    FileSystemStorage,
    S3Storage,
    TieredStorage,
    get_storage,
    object_key,
)
from archive.tasks import copy_to_object_store, evict_cached_copies, sweep_object_store_copies
from pacs_cloud.celery import app as celery_app
from pacs_cloud.lib.uids import InvalidUID
from tests.archive.conftest import make_ct, write

S3_URL = os.environ.get("S3_ENDPOINT_URL", "")
requires_s3 = pytest.mark.skipif(
    not S3_URL, reason="needs a real S3 server: set S3_ENDPOINT_URL (.ci/run starts a Ceph RADOS Gateway)"
)
INSTITUTION = "0d5f2b8e-7f44-4a8e-9a55-1b2d3c4e5f60"


def test_object_keys_are_made_of_validated_uids_only():
    assert object_key(INSTITUTION, "1.2.3", "1.2.3.4", "1.2.3.4.5") == f"{INSTITUTION}/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert object_key(INSTITUTION, "1.2", "1.3", "1.4", version="ab12cd34ef56ab78").endswith(
        "/1.4.ab12cd34ef56ab78.dcm"
    )
    for bad in ("../../etc", "1.2/../3", "1.2.abc", "", "1." + "9" * 64):
        with pytest.raises(InvalidUID):
            object_key(INSTITUTION, bad, "1.2", "1.3")
    with pytest.raises(ValueError):
        object_key(INSTITUTION, "1.2", "1.3", "1.4", version="../x")
    with pytest.raises(ValueError):
        object_key("../other", "1.2", "1.3", "1.4")


def test_the_file_system_backend_refuses_keys_leaving_its_root(tmp_path):
    backend = FileSystemStorage(tmp_path / "root")
    with pytest.raises(ValueError):
        backend.path("../outside.dcm")


def _empty_and_delete(store: S3Storage) -> None:
    for item in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        store.client.delete_object(Bucket=store.bucket, Key=item["Key"])
    store.client.delete_bucket(Bucket=store.bucket)


@pytest.fixture
def s3_backend(settings):
    settings.S3_MULTIPART_BYTES = 5 * 1024 * 1024  # the smallest part size S3 allows
    store = S3Storage(f"test-{uuid.uuid4().hex[:12]}", "archive", endpoint_url=S3_URL)
    yield store
    _empty_and_delete(store)


@pytest.fixture(params=["file", pytest.param("s3", marks=[pytest.mark.s3, requires_s3])])
def backend(request, tmp_path):
    if request.param == "file":
        return FileSystemStorage(tmp_path / "objects")
    return request.getfixturevalue("s3_backend")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_object_is_stored_read_back_and_deleted(backend):
    key = object_key(INSTITUTION, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    data = os.urandom(300_000)
    assert backend.put_chunks(key, [data[:1000], data[1000:]], sha(data)) == "stored"
    assert backend.exists(key)
    with backend.open(key) as handle:
        assert handle.read() == data
    assert backend.read_range(key, 1000, 500) == data[1000:1500]
    backend.delete(key)
    assert not backend.exists(key)


def test_a_large_object_goes_up_in_parts_and_is_verified(backend, tmp_path):
    key = object_key(INSTITUTION, "1.2.3", "1.2.3.4", "1.2.3.4.6")
    source = tmp_path / "large.dcm"
    data = os.urandom(12 * 1024 * 1024 + 123)
    source.write_bytes(data)
    backend.put_file(key, source, sha(data))
    with backend.open(key) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == sha(data)
    if isinstance(backend, S3Storage):
        head = backend.client.head_object(Bucket=backend.bucket, Key=backend._key(key))
        assert head["ETag"].endswith('-3"')  # three parts
        assert head["Metadata"]["sha256"] == sha(data)
        assert backend.sha256_of(key) == sha(data)


@pytest.mark.s3
@requires_s3
def test_the_s3_server_checks_what_we_send_and_we_check_what_it_holds(s3_backend):
    backend = s3_backend
    from botocore.exceptions import ClientError

    key = object_key(INSTITUTION, "1.2.3", "1.2.3.4", "1.2.3.4.7")
    wrong_md5 = base64.b64encode(hashlib.md5(b"other bytes", usedforsecurity=False).digest()).decode()
    with pytest.raises(ClientError) as refused:
        backend.client.put_object(Bucket=backend.bucket, Key=backend._key(key), Body=b"payload", ContentMD5=wrong_md5)
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    backend.put_chunks(key, [b"payload"], sha(b"payload"))
    with pytest.raises(ChecksumMismatch):
        backend._verify(key, '"0"', sha(b"payload"), 7)
    with pytest.raises(ChecksumMismatch):
        backend._verify(key, f'"{hashlib.md5(b"payload", usedforsecurity=False).hexdigest()}"', sha(b"other"), 7)


@pytest.fixture
def tiered(tmp_path, settings):
    """STORAGE_URL=s3://...: a local cache in front of a real S3 bucket."""
    bucket = f"tier-{uuid.uuid4().hex[:12]}"
    settings.STORAGE_URL = f"s3://{bucket}/pacs"
    settings.STORAGE_CACHE_DIR = str(tmp_path / "cache")
    settings.DATA_DIR = tmp_path
    settings.STORAGE_COPY_GRACE_SECONDS = 0
    storage_module.storage_for.cache_clear()
    tier = get_storage()
    yield tier
    _empty_and_delete(tier.store)
    storage_module.storage_for.cache_clear()


@pytest.mark.s3
@requires_s3
def test_objects_are_received_into_the_cache_and_copied_to_s3_by_workers(
    transactional_db, tenants, tiered, tmp_path, settings
):
    assert isinstance(tiered, TieredStorage)
    instances = []
    for index in range(3):
        result = store_instance(
            write(make_ct(seed=index), tmp_path / f"{index}.dcm"), institution=tenants.a.institution
        )
        instances.append(result.instance)
    # Durable in the cache, recorded as such; nothing is only in a queue.
    assert {i.location for i in Instance.objects.all()} == {"cache"}
    assert all(tiered.cache.local_path(i.storage_key) for i in instances)
    celery_app.conf.task_always_eager = True  # the queued copies run here
    try:
        assert sweep_object_store_copies() == 3
    finally:
        celery_app.conf.task_always_eager = False
    assert copy_to_object_store([str(i.pk) for i in instances]) == 0  # already copied: nothing to do twice
    assert {i.location for i in Instance.objects.all()} == {"stored"}
    for instance in instances:
        assert tiered.store.sha256_of(instance.storage_key) == instance.sha256
    # Past the retention the cached copies go; reads come from S3.
    settings.STORAGE_CACHE_RETENTION_HOURS = 0
    assert evict_cached_copies() == 3
    assert tiered.cache.local_path(instances[0].storage_key) is None
    with tiered.open(instances[0].storage_key) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == instances[0].sha256


def test_health_makes_a_round_trip_through_the_archive_storage(client, storage_dir, db):
    answer = client.get("/healthz").json()
    assert answer["checks"]["storage"]["status"] == "ok"
    assert answer["checks"]["storage"]["backend"] == "FileSystemStorage"
    assert not list(storage_dir.rglob("*.probe"))


def test_a_misconfigured_storage_is_a_system_check_error(settings):
    from archive.checks import check_storage

    settings.STORAGE_URL = "ftp://archive.example.org/dicom"
    assert [problem.id for problem in check_storage(None)] == ["archive.E001"]
    settings.STORAGE_URL = "s3://"
    assert [problem.id for problem in check_storage(None)] == ["archive.E002"]


def test_staging_files_left_by_a_crash_are_discarded(storage_dir, settings):
    import os as _os
    import time as _time

    from archive.tasks import discard_stale_staging

    storage = get_storage()
    stale = storage.stage([b"half an object"])
    fresh = storage.stage([b"an object being received"])
    old = _time.time() - 7200
    _os.utime(stale, (old, old))
    assert discard_stale_staging() == 1
    assert not stale.exists() and fresh.exists()
