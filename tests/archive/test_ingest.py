"""The one ingest service: what is stored, what is refused and why, and that refusals touch nothing."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from django.test import override_settings

from archive import signals
from archive.ingest import IngestError, IngestSession, Source, store_dataset, store_instance
from archive.models import IngestConflict, Instance, Patient, Series, Study
from archive.storage import get_storage
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import dataset_bytes, dataset_part, make_ct, sample_path, with_fresh_uids, write


def stored_bytes(instance: Instance) -> bytes:
    with get_storage().open(instance.storage_key) as handle:
        return handle.read()


def test_it_stores_and_indexes_a_ct_image(tenants, storage_dir):
    path = sample_path("CT_small.dcm")
    result = store_instance(path, institution=tenants.a.institution)
    assert result.created
    study = Study.objects.get()
    assert study.institution == tenants.a.institution
    assert (study.num_series, study.num_instances) == (1, 1)
    assert study.modalities == "CT"
    assert study.patient.patient_id == "1CT1"
    instance = result.instance
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert instance.location == "stored"
    # The data set is kept byte for byte; only the File Meta Information is ours.
    data = stored_bytes(instance)
    assert data.endswith(dataset_bytes(path))
    assert instance.size == len(data)
    import hashlib

    assert instance.sha256 == hashlib.sha256(data).hexdigest()
    # Metadata for WADO-RS, with pixel data as bulk data.
    assert instance.metadata["00100020"]["Value"] == ["1CT1"]
    assert instance.metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": ""}
    # The pixel data can be found without parsing.
    ds = pydicom.dcmread(sample_path("CT_small.dcm"))
    start = instance.pixel_data_offset
    assert data[start : start + instance.pixel_data_length] == ds.PixelData


def test_the_storage_key_is_built_from_validated_uids(tenants, storage_dir):
    result = store_instance(sample_path("CT_small.dcm"), institution=tenants.a.institution)
    key = result.instance.storage_key
    ds = pydicom.dcmread(sample_path("CT_small.dcm"), stop_before_pixels=True)
    assert key.startswith(
        f"{tenants.a.institution.pk}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}."
    )
    assert (storage_dir / key).is_file()


def test_an_identical_resend_is_not_stored_twice(tenants, storage_dir):
    path = sample_path("CT_small.dcm")
    first = store_instance(path, institution=tenants.a.institution)
    again = store_instance(path, institution=tenants.a.institution)
    assert not again.created
    assert again.instance.pk == first.instance.pk
    assert Study.objects.get().num_instances == 1
    assert len(list(storage_dir.rglob("*.dcm"))) == 1


def test_the_same_instance_over_dimse_and_as_a_file_is_the_same_bytes(tenants, storage_dir):
    path = sample_path("CT_small.dcm")
    store_instance(path, institution=tenants.a.institution)
    session = IngestSession(Source("dimse", "ALPHA_CT"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    again = store_dataset(
        dataset_bytes(path),
        transfer_syntax="1.2.840.10008.1.2.1",
        institution=tenants.a.institution,
        session=session,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
    )
    assert not again.created


def test_different_bytes_under_an_archived_uid_are_kept_aside_as_a_conflict(tenants, storage_dir, tmp_path):
    ds = make_ct()
    first = store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
    original = stored_bytes(first.instance)
    ds.SeriesDescription = "CHANGED"
    with pytest.raises(IngestError) as caught:
        store_instance(write(ds, tmp_path / "b.dcm"), institution=tenants.a.institution)
    assert caught.value.code == "conflict"
    assert caught.value.sop_instance_uid == ds.SOPInstanceUID
    conflict = IngestConflict.objects.get()
    assert conflict.instance == first.instance
    assert conflict.status == "open"
    # Never silently overwritten: the archived object is untouched, the new one is kept aside.
    first.instance.refresh_from_db()
    assert stored_bytes(first.instance) == original
    with get_storage().open(conflict.storage_key) as kept:
        assert b"CHANGED" in kept.read()
    assert AuditEvent.objects.filter(action="archive.instance.conflict").count() == 1


def test_the_same_uid_at_another_institution_is_not_a_conflict(tenants, storage_dir):
    store_instance(sample_path("CT_small.dcm"), institution=tenants.a.institution)
    result = store_instance(sample_path("CT_small.dcm"), institution=tenants.b.institution)
    assert result.created
    assert Study.objects.count() == 2


def test_an_instance_for_another_patient_in_an_archived_study_is_refused(tenants, storage_dir, tmp_path):
    first = make_ct(patient_id="P1")
    store_instance(write(first, tmp_path / "a.dcm"), institution=tenants.a.institution)
    other = make_ct(study_uid=first.StudyInstanceUID, patient_id="P2")
    with pytest.raises(IngestError) as caught:
        store_instance(write(other, tmp_path / "b.dcm"), institution=tenants.a.institution)
    assert caught.value.code == "inconsistent"
    assert "PatientID" in caught.value.reason
    assert Instance.objects.count() == 1


def test_a_different_name_in_the_same_study_is_refused_but_case_and_accents_are_not(tenants, storage_dir, tmp_path):
    first = make_ct(patient_name="Müller^Hans")
    store_instance(write(first, tmp_path / "a.dcm"), institution=tenants.a.institution)
    same = make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, patient_name="MULLER^HANS")
    assert store_instance(write(same, tmp_path / "b.dcm"), institution=tenants.a.institution).created
    other = make_ct(study_uid=first.StudyInstanceUID, patient_name="SMITH^JOHN")
    with pytest.raises(IngestError, match="PatientName"):
        store_instance(write(other, tmp_path / "c.dcm"), institution=tenants.a.institution)


def test_a_series_in_another_study_or_with_another_modality_is_refused(tenants, storage_dir, tmp_path):
    first = make_ct()
    store_instance(write(first, tmp_path / "a.dcm"), institution=tenants.a.institution)
    moved = make_ct(series_uid=first.SeriesInstanceUID)
    with pytest.raises(IngestError, match="another study"):
        store_instance(write(moved, tmp_path / "b.dcm"), institution=tenants.a.institution)
    relabelled = make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, modality="MR")
    with pytest.raises(IngestError, match="modality"):
        store_instance(write(relabelled, tmp_path / "c.dcm"), institution=tenants.a.institution)


def test_a_known_patient_with_another_birth_date_is_refused(tenants, storage_dir, tmp_path):
    store_instance(write(make_ct(patient_id="P9"), tmp_path / "a.dcm"), institution=tenants.a.institution)
    with pytest.raises(IngestError, match="PatientBirthDate"):
        store_instance(
            write(make_ct(patient_id="P9", birth_date="19990909"), tmp_path / "b.dcm"),
            institution=tenants.a.institution,
        )
    # A new study for the same patient with the same birth date is welcome.
    assert store_instance(write(make_ct(patient_id="P9"), tmp_path / "c.dcm"), institution=tenants.a.institution)
    assert Patient.objects.filter(patient_id="P9").count() == 1
    assert Study.objects.count() == 2


def test_a_non_dicom_file_is_refused(tenants, storage_dir, tmp_path):
    bogus = tmp_path / "note.txt"
    bogus.write_text("not an image, just a note from the ward")
    with pytest.raises(IngestError) as caught:
        store_instance(bogus, institution=tenants.a.institution)
    assert caught.value.code == "unreadable"
    assert not Instance.objects.exists()


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_file_is_refused(tenants, storage_dir, tmp_path, keep):
    data = sample_path("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(IngestError) as caught:
        store_instance(cut, institution=tenants.a.institution)
    assert caught.value.code in ("truncated", "unreadable")
    assert not Instance.objects.exists()
    assert not list(storage_dir.rglob("*.dcm"))


def test_pydicoms_truncated_sample_is_refused(tenants, storage_dir):
    with pytest.raises(IngestError) as caught:
        store_instance(sample_path("MR_truncated.dcm"), institution=tenants.a.institution)
    assert caught.value.code == "truncated"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.3/../../4", "1.2.abc", "1." + "2" * 70, ""])
def test_a_uid_that_is_not_a_uid_is_refused_and_never_reaches_a_path(tenants, storage_dir, tmp_path, bad):
    ds = make_ct()
    ds.SOPInstanceUID = bad
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(IngestError) as caught:
        store_instance(path, institution=tenants.a.institution)
    assert caught.value.code == "bad_uid"
    assert not list(storage_dir.rglob("*")) or not list(storage_dir.rglob("*.dcm"))
    assert not (tmp_path / "etc").exists()


def test_a_file_over_the_size_limit_is_refused(tenants, storage_dir, tmp_path):
    path = write(make_ct(size=64), tmp_path / "big.dcm")
    with override_settings(MAX_INSTANCE_BYTES=4096), pytest.raises(IngestError) as caught:
        store_instance(path, institution=tenants.a.institution)
    assert caught.value.code == "too_large"
    assert "4096" in caught.value.reason


def test_a_dicomdir_is_not_an_image(tenants, storage_dir):
    from pydicom.data import get_testdata_file

    with pytest.raises(IngestError) as caught:
        store_instance(Path(get_testdata_file("DICOMDIR")), institution=tenants.a.institution)
    assert caught.value.code == "not_an_image"


def test_names_in_gb18030_are_stored_as_unicode(tenants, storage_dir):
    store_instance(sample_path("chrX2.dcm"), institution=tenants.a.institution)
    patient = Patient.objects.get()
    assert patient.name == "Wang^XiaoDong=王^小东"
    assert patient.name_search == "WANG^XIAODONG"
    assert patient.name_ideographic == "王^小东"
    assert " 王小东 " in patient.name_words


def test_a_file_without_patient_id_gets_a_patient_of_its_own(tenants, storage_dir, tmp_path):
    one = make_ct(patient_id="", patient_name="UNKNOWN")
    two = make_ct(patient_id="", patient_name="ANONYMOUS")
    store_instance(write(one, tmp_path / "a.dcm"), institution=tenants.a.institution)
    store_instance(write(two, tmp_path / "b.dcm"), institution=tenants.a.institution)
    assert Patient.objects.count() == 2


def test_compressed_data_is_stored_as_received(tenants, storage_dir, tmp_path):
    path = with_fresh_uids(sample_path("JPEG2000.dcm"), tmp_path / "j2k.dcm")
    instance = store_instance(path, institution=tenants.a.institution).instance
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.4.91"
    assert stored_bytes(instance).endswith(dataset_bytes(path))


def test_signals_announce_new_studies_and_instances_after_commit(
    tenants, storage_dir, tmp_path, django_capture_on_commit_callbacks
):
    seen = []

    def on_study(sender, study, **kwargs):
        seen.append(("study", study.study_instance_uid))

    def on_instance(sender, instance, created, **kwargs):
        seen.append(("instance", created))

    signals.study_received.connect(on_study)
    signals.instance_stored.connect(on_instance)
    try:
        ds = make_ct()
        with django_capture_on_commit_callbacks(execute=True):
            store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
            store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
    finally:
        signals.study_received.disconnect(on_study)
        signals.instance_stored.disconnect(on_instance)
    assert seen == [("study", ds.StudyInstanceUID), ("instance", True), ("instance", False)]


def test_each_study_received_is_audited_once_per_session(tenants, storage_dir, tmp_path):
    session = IngestSession(Source("dimse", "ALPHA_CT", address="127.0.0.1"))
    study = make_ct()
    for number in range(3):
        ds = make_ct(study_uid=study.StudyInstanceUID, series_uid=study.SeriesInstanceUID, instance_number=number)
        store_dataset(
            dataset_part(ds),
            transfer_syntax="1.2.840.10008.1.2.1",
            institution=tenants.a.institution,
            session=session,
        )
    events = AuditEvent.objects.filter(action="archive.study.receive")
    assert events.count() == 1
    assert events.get().actor == "ALPHA_CT"
    assert Series.objects.get().num_instances == 3
    assert session.stored == 3


def test_a_dataset_whose_uid_differs_from_the_request_is_refused(tenants, storage_dir):
    ds = make_ct()
    with pytest.raises(IngestError) as caught:
        store_dataset(
            dataset_part(ds),
            transfer_syntax="1.2.840.10008.1.2.1",
            institution=tenants.a.institution,
            session=IngestSession(Source("dimse", "ALPHA_CT")),
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid="1.2.3.4",
        )
    assert caught.value.code == "inconsistent"


def test_an_object_that_cannot_be_made_durable_is_refused_and_leaves_no_row(
    tenants, storage_dir, tmp_path, monkeypatch
):
    from archive.storage import FileSystemStorage

    first = make_ct(patient_id="DISK1")
    store_instance(write(first, tmp_path / "a.dcm"), institution=tenants.a.institution)

    def disk_full(self, key, chunks, sha256):
        list(chunks)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileSystemStorage, "put_chunks", disk_full)
    second = make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, patient_id="DISK1",
                     instance_number=2)  # fmt: skip
    with pytest.raises(IngestError) as caught:
        store_instance(write(second, tmp_path / "b.dcm"), institution=tenants.a.institution)
    assert caught.value.code == "storage"
    assert "No space left" in caught.value.reason
    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [first.SOPInstanceUID]
    study = Study.objects.get()
    assert (study.num_instances, Series.objects.get().num_instances) == (1, 1)
