"""STOW-RS indexes its instances in batches, one transaction each (group commit)."""

from __future__ import annotations

import pytest
from django.db import connection
from pydicom.uid import generate_uid

from archive import dicomweb, ingest
from archive.models import Instance, Series
from tests.archive.conftest import encode, make_ct
from tests.archive.test_dicomweb import headers_for, multipart, stow

pytestmark = pytest.mark.django_db(transaction=True)


def _series(count: int) -> tuple[str, list]:
    study, series = generate_uid(), generate_uid()
    return series, [make_ct(study_uid=study, series_uid=series, instance_number=n + 1, seed=n) for n in range(count)]


def test_a_request_larger_than_a_batch_stores_every_instance(live_url, tenants, storage_dir, monkeypatch):
    monkeypatch.setattr(dicomweb, "STOW_BATCH", 2)
    series_uid, datasets = _series(5)
    response = stow(live_url, headers_for(tenants.a.technologist), multipart([encode(ds) for ds in datasets]))
    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 5
    assert Instance.objects.count() == 5
    assert Series.objects.get(series_instance_uid=series_uid).num_instances == 5


def test_a_part_the_index_cannot_take_is_refused_alone_and_leaves_no_object_behind(
    live_url, tenants, storage_dir, monkeypatch
):
    monkeypatch.setattr(dicomweb, "STOW_BATCH", 2)
    insert = ingest._insert_and_count
    calls = []

    def failing_fourth(instance, study_pk, now):
        calls.append(instance.sop_instance_uid)
        if len(calls) == 4:  # the second of the second batch
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")
        return insert(instance, study_pk, now)

    monkeypatch.setattr(ingest, "_insert_and_count", failing_fourth)
    _, datasets = _series(5)
    response = stow(live_url, headers_for(tenants.a.technologist), multipart([encode(ds) for ds in datasets]))
    assert response.status_code == 202
    stored = [item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]]
    indexed = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert set(stored) == indexed
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    # Its own savepoint: the others of its batch are stored.
    assert indexed == {uids[0], uids[1], uids[2], uids[4]}
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [uids[3]]
    assert "could not index" in failed["00000902"]["Value"][0]
    # Nothing in storage that the index does not know.
    keys = {str(p.relative_to(storage_dir)) for p in storage_dir.rglob("*.dcm")}
    assert keys == set(Instance.objects.values_list("storage_key", flat=True))
