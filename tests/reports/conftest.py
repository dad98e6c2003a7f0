"""Report fixtures: an exam that went the whole way (order → archived study → routed → claimed task).

``reading`` gives, at hospital a: an order with a referring clinician, its CT
image archived through the real ingest, the study complete and routed by the
workflow engine, and the reading task claimed by a's radiologist.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.test import TestCase
from pydicom.data import get_testdata_file

from archive.actions import do_complete_study
from archive.ingest import store_instance
from archive.models import Instance, Study
from pacs_cloud.lib.uids import new_uid
from reports import actions
from reports.models import Report, ReportTemplate
from tests.conftest import PASSWORD
from tests.worklist.conftest import make_order, make_patient, make_site
from workflow.actions import do_claim_reading_task, do_start_reading_process
from workflow.models import ReadingTask
from worklist.models import Order


@pytest.fixture(autouse=True)
def _storage(tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.REPORTS_HL7_OUTBOUND = ""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "reports-tests"},
        "render": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "reports-tests-render"},
    }


@dataclass
class Reading:
    tenant: Any
    order: Order
    study: Study
    instance: Instance
    task: ReadingTask
    template: ReportTemplate


def archive_image(institution, *, study_uid: str, patient, accession: str, sample: str = "CT_small.dcm") -> Instance:
    ds = pydicom.dcmread(get_testdata_file(sample))
    ds.SpecificCharacterSet = "ISO_IR 192"  # names may be written in Chinese characters
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    ds.AccessionNumber = accession
    ds.StudyDescription = "CT CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.dcm"
        ds.save_as(path, enforce_file_format=True)
        return store_instance(path, institution=institution).instance


def make_template(institution) -> ReportTemplate:
    return ReportTemplate.objects.create(
        institution=institution,
        name="CT chest",
        modality="CT",
        sections={
            "technique": "Axial CT of the chest without contrast.",
            "findings": "",
            "impression": "",
        },
        macros=[{"name": "Normal chest", "section": "findings", "text": "Lungs are clear. No effusion."}],
    )


def make_reading(tenant, tag: str = "ALPHA", *, claim: bool = True, patient_name: str = "DOE^JOHN") -> Reading:
    institution = tenant.institution
    site = make_site(institution, tag)
    patient = make_patient(institution, patient_name, birth_date=None)
    order = make_order(site, patient, referring_physician=tenant.clinician.display_name, clinical_info="cough")
    with TestCase.captureOnCommitCallbacks(execute=True):
        instance = archive_image(
            institution, study_uid=order.study_instance_uid, patient=patient, accession=order.accession_number
        )
    study = Study.objects.select_related("patient", "institution").get(pk=instance.series.study_id)
    do_complete_study(study, actor_label="test")
    study.refresh_from_db()
    task = do_start_reading_process(study).tasks.get()
    if claim:
        do_claim_reading_task(task, acting_user=tenant.radiologist)
    task.refresh_from_db()
    order.refresh_from_db()
    return Reading(tenant, order, study, instance, task, make_template(institution))


@pytest.fixture
def reading(tenants) -> Reading:
    return make_reading(tenants.a)


def write_and_sign(
    reading: Reading, *, findings: str = "A 6 mm nodule in the right upper lobe.", key_image: bool = True, **sign: Any
):
    """A report written from the template by the task's holder, with one key image, signed final."""
    user = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=user, template=reading.template)
    content = {
        **report.draft,
        "findings": findings,
        "impression": "Indeterminate nodule; CT follow-up in 6 months.",
        "key_images": [{"instance": str(reading.instance.pk), "frame": 1, "note": "nodule"}] if key_image else [],
    }
    report = actions.do_autosave_draft(report, acting_user=user, content=content, base_revision=report.draft_revision)
    version = actions.do_sign_report(report, acting_user=user, password=PASSWORD, **sign)
    return Report.objects.get(pk=report.pk), version
