"""Builders for the patient-link tests: one real image per study, a reading task at a hospital."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from archive.actions import do_complete_study
from archive.ingest import store_instance
from archive.models import Instance, Study
from pacs_cloud.lib.uids import new_uid
from workflow.actions import do_claim_reading_task, do_save_routing_policy, do_start_reading_process
from workflow.models import ReadingTask

ZHANG = {"name": "张三", "birth": "19600315", "sex": "M"}


def exam(
    institution,
    *,
    patient_id: str,
    day: str,
    issuer: str | None = None,
    part: str = "HEAD",
    national_id: str = "",
    name: str = ZHANG["name"],
    birth: str = ZHANG["birth"],
    sex: str = ZHANG["sex"],
) -> Instance:
    """A one-image CT of ``part`` on ``day`` (YYYYMMDD) for the patient, archived at ``institution``."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth, sex
    ds.IssuerOfPatientID = issuer or institution.patient_id_issuer
    if national_id:
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = national_id, "CN-RIC", "TEXT"
        ds.OtherPatientIDsSequence = [other]
    ds.StudyDate, ds.StudyTime, ds.StudyDescription, ds.BodyPartExamined = day, "090000", f"CT {part}", part
    ds.AccessionNumber = f"A{day}{patient_id}"[:16]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.dcm"
        ds.save_as(path, enforce_file_format=True)
        return store_instance(path, institution=institution).instance


def study_of(instance: Instance) -> Study:
    return Study.objects.get(pk=instance.series.study_id)


def claimed_task(study: Study, reader) -> ReadingTask:
    """``study`` routed to its hospital's own radiologists and claimed by ``reader``."""
    do_save_routing_policy(
        study.institution, {"rules": [{"name": "Own", "offer_to": [{"kind": "own"}]}]}, acting_user=None
    )
    do_complete_study(study, actor_label="test")
    task = ReadingTask.objects.filter(study=study).first() or do_start_reading_process(study).tasks.get()
    return do_claim_reading_task(task, acting_user=reader)


def study_values(instance: Instance) -> dict[str, str]:
    """The isolation harness's values naming one study, its series and its instance."""
    series = instance.series
    study = series.study
    return {
        "patient.id": str(study.patient_id),
        "study.id": str(study.pk),
        "study.uid": study.study_instance_uid,
        "series.id": str(series.pk),
        "volume.series.id": str(series.pk),
        "volume.study.id": str(study.pk),
        "series.uid": series.series_instance_uid,
        "instance.id": str(instance.pk),
        "instance.uid": instance.sop_instance_uid,
    }
