"""An object whose patient is born after today is kept aside for review, not archived."""

from __future__ import annotations

import datetime as dt
import io

import pytest
import time_machine

from archive.actions import do_resolve_conflict
from archive.ingest import IngestError, IngestSession, Source, store_dataset, store_instance, store_part10
from archive.models import IngestConflict, Instance, Patient, Study
from archive.storage import get_storage
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import dataset_part, make_ct, write

# 01:00 on 2 March in Shanghai (the tenants' time zone), still 1 March in UTC.
SHANGHAI_JUST_AFTER_MIDNIGHT = dt.datetime(2026, 3, 1, 17, 0, tzinfo=dt.UTC)


def assert_kept_aside(caught, ds) -> IngestConflict:
    assert caught.value.code == "inconsistent"
    assert "in the future" in str(caught.value) and "kept aside for review" in str(caught.value)
    conflict = IngestConflict.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    assert conflict.status == "open" and conflict.instance is None
    assert "in the future" in conflict.reason
    with get_storage().open(conflict.storage_key) as kept:
        assert ds.SOPInstanceUID.encode() in kept.read()
    assert not Instance.objects.exists() and not Study.objects.exists() and not Patient.objects.exists()
    assert AuditEvent.objects.filter(action="archive.instance.kept_aside", object_id=str(conflict.pk)).exists()
    return conflict


def test_a_file_with_a_birth_date_in_the_future_is_kept_aside(tenants, storage_dir, tmp_path):
    ds = make_ct(birth_date="20990101")
    with pytest.raises(IngestError) as caught:
        store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
    assert_kept_aside(caught, ds)


def test_a_c_store_with_a_birth_date_in_the_future_is_kept_aside(tenants, storage_dir):
    ds = make_ct(birth_date="20990101")
    with pytest.raises(IngestError) as caught:
        store_dataset(
            dataset_part(ds),
            transfer_syntax="1.2.840.10008.1.2.1",
            institution=tenants.a.institution,
            session=IngestSession(Source("dimse", "ALPHA_CT")),
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
        )
    conflict = assert_kept_aside(caught, ds)
    assert conflict.source.startswith("dimse")


def test_a_stow_part_with_a_birth_date_in_the_future_is_kept_aside(tenants, storage_dir):
    ds = make_ct(birth_date="20990101")
    part = io.BytesIO()
    ds.save_as(part, enforce_file_format=True)
    with pytest.raises(IngestError) as caught:
        store_part10(part.getvalue(), institution=tenants.a.institution, session=IngestSession(Source("stow", "tech")))
    assert_kept_aside(caught, ds)


def test_the_birth_date_is_compared_with_the_institutions_today(tenants, storage_dir, tmp_path):
    with time_machine.travel(SHANGHAI_JUST_AFTER_MIDNIGHT, tick=True):
        born_today = make_ct(birth_date="20260302")
        assert store_instance(write(born_today, tmp_path / "a.dcm"), institution=tenants.a.institution).created
        tomorrow = make_ct(birth_date="20260303", patient_id="P0002")
        with pytest.raises(IngestError):
            store_instance(write(tomorrow, tmp_path / "b.dcm"), institution=tenants.a.institution)
    assert IngestConflict.objects.get().sop_instance_uid == tomorrow.SOPInstanceUID


def test_a_kept_aside_object_is_discarded_on_review_and_cannot_be_forced_in(tenants, storage_dir, tmp_path):
    ds = make_ct(birth_date="20990101")
    with pytest.raises(IngestError):
        store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
    conflict = IngestConflict.objects.get()
    with pytest.raises(ValueError, match="correct it at the source"):
        do_resolve_conflict(conflict, keep="new", acting_user=tenants.a.institution_admin)
    assert do_resolve_conflict(conflict, keep="existing", acting_user=tenants.a.institution_admin).status == (
        IngestConflict.Status.KEPT_EXISTING
    )
