"""Image exchange: the receiver imports a shared study under its own patient; the source stays byte-identical."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pydicom
import pytest

from archive.ingest import store_instance
from archive.models import Instance, Patient, Study
from archive.storage import get_storage
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from tests.viewer.phantom import ct_datasets
from workflow.referrals import actions

from .access_probe import probe


def sha256_of(key: str) -> str:
    digest = hashlib.sha256()
    with get_storage().open(key) as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def ct_series(tenants):
    """A five-slice CT of a Riverside-style patient, archived through the ingest service."""
    datasets, _ = ct_datasets(size=16, slices=5)
    with tempfile.TemporaryDirectory() as folder:
        for ds in datasets:
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Lin^Mei=林^美"
            ds.PatientID = "ACH-0042"
            ds.IssuerOfPatientID = tenants.a.institution.patient_id_issuer
            ds.PatientBirthDate = "19580302"
            ds.PatientSex = "F"
            path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            instance = store_instance(path, institution=tenants.a.institution).instance
    return instance.series.study


def sent_referral(tenants, study):
    a = tenants.a
    referral = actions.do_create_referral(
        acting_user=a.referral_coordinator,
        from_institution=a.institution,
        to_institution=tenants.b.institution,
        patient=study.patient,
        reason="Lung nodule work-up",
        studies=[study],
    )
    actions.do_record_consent(referral, acting_user=a.referral_coordinator, method="written")
    return actions.do_send_referral(referral, acting_user=a.referral_coordinator)


def test_import_registers_a_local_patient_and_leaves_the_source_untouched(tenants, ct_series):
    a, b = tenants.a, tenants.b
    source_rows = list(Instance.objects.filter(series__study=ct_series).order_by("instance_number"))
    before = {row.storage_key: sha256_of(row.storage_key) for row in source_rows}
    assert all(row.sha256 == before[row.storage_key] for row in source_rows)
    referral = sent_referral(tenants, ct_series)
    url = f"/api/v1/referrals/{referral.pk}/import/"
    # Not yet accepted: the receiver may look, but imports once it takes the patient.
    coordinator = api_client(b.referral_coordinator)
    answer = coordinator.post(url, {"study": str(ct_series.pk)}, format="json")
    assert answer.status_code == 409, answer.content
    actions.do_accept_referral(referral, acting_user=b.referral_coordinator)
    assert api_client(b.clinician).post(url, {"study": str(ct_series.pk)}, format="json").status_code == 403
    assert api_client(a.referral_coordinator).post(url, {"study": str(ct_series.pk)}, format="json").status_code == 403

    answer = coordinator.post(url, {"study": str(ct_series.pk)}, format="json")
    assert answer.status_code == 201, answer.content
    imported = answer.json()
    local = Patient.objects.get(institution=b.institution, patient_id=imported["patient"]["patient_id"])
    assert local.patient_id != "ACH-0042" and local.issuer == b.institution.patient_id_issuer
    assert local.name == "Lin^Mei=林^美" and str(local.birth_date) == "1958-03-02" and local.sex == "F"

    copy = Study.objects.get(pk=imported["study"])
    assert copy.institution == b.institution and copy.patient == local
    assert copy.study_instance_uid == ct_series.study_instance_uid and copy.num_instances == 5
    for row in Instance.objects.filter(series__study=copy):
        with get_storage().open(row.storage_key) as handle:
            ds = pydicom.dcmread(handle)
        assert ds.PatientID == local.patient_id and ds.IssuerOfPatientID == local.issuer
        assert ds.OtherPatientIDsSequence[0].PatientID == "ACH-0042"
        assert row.storage_key not in before

    # The source: same rows, same keys, byte-identical objects, same patient.
    after = {row.storage_key: sha256_of(row.storage_key) for row in Instance.objects.filter(series__study=ct_series)}
    assert after == before
    ct_series.refresh_from_db()
    assert ct_series.patient.patient_id == "ACH-0042" and ct_series.institution == a.institution
    event = AuditEvent.objects.get(action="sharing.import")
    assert event.detail["source_patient_id"] == "ACH-0042" and event.patient_id == local.patient_id

    # The copy is the receiver's own: it stays after the referral ends, the original does not.
    actions.do_admit_referral(referral, acting_user=b.referral_coordinator)
    actions.do_return_referral(
        referral, acting_user=b.referral_coordinator, discharge_summary="benign", follow_up_plan="none"
    )
    actions.do_close_referral(referral, acting_user=a.referral_coordinator)
    original = probe(b.clinician, ct_series)
    assert original.rest == original.viewer == original.manifest == 404
    # By its UID the study now answers with the receiver's own copy.
    assert original.qido == [copy.study_instance_uid] and original.metadata == 200
    metadata = api_client(b.clinician).get(f"/dicomweb/studies/{copy.study_instance_uid}/metadata").json()
    assert {item["00100020"]["Value"][0] for item in metadata} == {local.patient_id}
    assert probe(b.clinician, copy).everywhere


def test_import_under_an_existing_local_patient(tenants, ct_series):
    b = tenants.b
    known = Patient.objects.create(
        institution=b.institution, patient_id="BCH-7", issuer=b.institution.patient_id_issuer, name="LIN^MEI"
    )
    referral = sent_referral(tenants, ct_series)
    actions.do_accept_referral(referral, acting_user=b.referral_coordinator)
    url = f"/api/v1/referrals/{referral.pk}/import/"
    coordinator = api_client(b.referral_coordinator)
    foreign = Patient.objects.exclude(institution=b.institution).first()
    assert (
        coordinator.post(url, {"study": str(ct_series.pk), "patient": str(foreign.pk)}, format="json").status_code
        == 400
    )
    answer = coordinator.post(url, {"study": str(ct_series.pk), "patient": str(known.pk)}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["patient"]["patient_id"] == "BCH-7"
    assert Study.objects.get(pk=answer.json()["study"]).patient == known
    # Again: the same import, no second copy.
    again = coordinator.post(url, {"study": str(ct_series.pk), "patient": str(known.pk)}, format="json")
    assert again.status_code == 201 and again.json()["id"] == answer.json()["id"]
    assert Study.objects.filter(study_instance_uid=ct_series.study_instance_uid).count() == 2
    other_study = Study.objects.exclude(pk=ct_series.pk).exclude(institution=b.institution).first()
    if other_study is not None:
        assert coordinator.post(url, {"study": str(other_study.pk)}, format="json").status_code == 404


def test_a_second_opinion_share_can_be_imported_by_its_receiver(tenants, ct_series):
    a, b = tenants.a, tenants.b
    share = actions.do_share_for_second_opinion(
        ct_series, b.institution, acting_user=a.radiologist, reason="neuroradiology opinion"
    )
    url = f"/api/v1/study-shares/{share.pk}/import/"
    assert api_client(a.referral_coordinator).post(url, {}, format="json").status_code == 403
    assert api_client(b.clinician).post(url, {}, format="json").status_code == 403
    assert api_client(tenants.c.radiologist).post(url, {}, format="json").status_code == 404
    answer = api_client(b.radiologist).post(url, {"patient_id": "BCH-555"}, format="json")
    assert answer.status_code == 201, answer.content
    copy = Study.objects.get(pk=answer.json()["study"])
    assert copy.institution == b.institution and copy.patient.patient_id == "BCH-555"
    actions.do_revoke_share(share, acting_user=a.radiologist, reason="answered")
    # An ended share is gone for the receiver.
    assert api_client(b.radiologist).post(url, {}, format="json").status_code == 404
