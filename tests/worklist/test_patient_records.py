"""One patient record per Patient ID at an institution, however the images arrive."""

from __future__ import annotations

import pydicom
import pytest
from django.urls import reverse
from pydicom.data import get_testdata_file

from archive.actions import do_merge_duplicate_patients
from archive.ingest import store_instance
from archive.models import Patient, Study
from pacs_cloud.lib.uids import new_uid
from worklist.actions import find_patients

from .conftest import make_order, make_patient


@pytest.fixture
def storage(settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    return tmp_path


def send_image(institution, folder, *, patient_id: str, name: str, issuer: str | None = None, accession: str = ""):
    """A modality's image as it often arrives: the Patient ID copied from the worklist, no issuer."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient_id, name, accession
    if issuer is None:
        if "IssuerOfPatientID" in ds:
            del ds.IssuerOfPatientID
    else:
        ds.IssuerOfPatientID = issuer
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return store_instance(path, institution=institution).instance.series.study


def test_images_without_an_issuer_join_the_registered_patient(client, tenants, sites, storage):
    institution = sites["a"].institution
    patient = make_patient(institution, "ZHAO^LEI=赵^磊", patient_id="RCH-77")
    make_order(sites["a"], patient)
    study = send_image(institution, storage, patient_id="RCH-77", name="ZHAO^LEI")
    assert study.patient_id == patient.pk
    assert Patient.objects.filter(institution=institution, patient_id="RCH-77").count() == 1
    client.force_login(tenants.a.technologist)
    page = client.get(reverse("worklist-register-order"), {"q": "RCH-77"}).content.decode()
    assert [p.pk for p in find_patients(institution, "RCH-77")] == [patient.pk]
    assert page.count("<td>RCH-77</td>") == 1
    assert f"?patient={patient.pk}" in page


def test_images_with_the_institutions_issuer_join_the_registered_patient(sites, storage):
    institution = sites["a"].institution
    patient = make_patient(institution, "ZHAO^LEI", patient_id="RCH-78")
    study = send_image(institution, storage, patient_id="RCH-78", name="ZHAO^LEI", issuer=institution.patient_id_issuer)
    assert study.patient_id == patient.pk


def test_images_from_another_issuer_stay_another_patient(sites, storage):
    institution = sites["a"].institution
    patient = make_patient(institution, "ZHAO^LEI", patient_id="RCH-79")
    study = send_image(institution, storage, patient_id="RCH-79", name="ZHAO^LEI", issuer="ELSEWHERE")
    assert study.patient_id != patient.pk
    assert Patient.objects.get(pk=study.patient_id).issuer == "ELSEWHERE"


def test_merging_joins_earlier_duplicates_with_their_studies_and_orders(sites, storage):
    institution = sites["a"].institution
    registered = make_patient(institution, "QIAN^YU=钱^玉", patient_id="RCH-80")
    order = make_order(sites["a"], registered)
    # A record made from images before blank issuers were read as the institution's own.
    duplicate = Patient.objects.create(institution=institution, patient_id="RCH-80", issuer="", name="QIAN^YU")
    study = send_image(institution, storage, patient_id="RCH-81", name="QIAN^YU")
    Study.objects.filter(pk=study.pk).update(patient=duplicate)
    other = make_patient(sites["b"].institution, "QIAN^YU", patient_id="RCH-80")

    assert do_merge_duplicate_patients() == 1
    assert not Patient.objects.filter(pk=duplicate.pk).exists()
    assert Study.objects.get(pk=study.pk).patient_id == registered.pk
    order.refresh_from_db()
    assert order.patient_id == registered.pk
    assert Patient.objects.filter(pk=other.pk).exists()
    assert do_merge_duplicate_patients() == 0
