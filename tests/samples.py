"""Real DICOM sample files, re-identified per test, archived through the real ingest service."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from archive.ingest import store_instance
from pacs_cloud.lib.uids import new_uid


@dataclass
class SampleStudy:
    study: object  # archive.models.Study
    series: object
    instance: object
    patient_name: str
    patient_id: str
    accession: str


def store_sample_study(
    institution,
    *,
    patient_name: str,
    patient_id: str,
    accession: str,
    description: str = "CT HEAD",
    sample: str = "CT_small.dcm",
) -> SampleStudy:
    """Archive one pydicom sample image as a new study of a new patient at ``institution``.

    Patient, accession and every UID are replaced, so each call makes distinct
    objects. Needs ``settings.STORAGE_URL`` pointing at a test folder.
    """
    ds = pydicom.dcmread(get_testdata_file(sample))
    if not patient_name.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # a name in Chinese characters
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = institution.patient_id_issuer
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = store_instance(path, institution=institution)
    instance = result.instance
    series = instance.series
    return SampleStudy(series.study, series, instance, patient_name, patient_id, accession)
