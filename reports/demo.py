"""The reports' part of the demo (DESIGN.md, fixed points: demo).

Report templates for Riverside and Hillside, and a demo CT at Riverside with a
final signed report, made the way a real one is: an exam registered on the
worklist, its image archived through ingest, the study completed and routed,
the reading task claimed by ``rad@riverside``, a key image marked, the
report written from the template and signed with the radiologist's password.
Idempotent: a second run finds the signed report and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pydicom
from django.utils import timezone
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from archive.actions import do_complete_study
from archive.ingest import Source, store_instance
from archive.models import Patient, Study
from pacs_cloud.demo import DEMO_PASSWORD
from pacs_cloud.models import Institution, User
from viewer.actions import do_mark_key_image
from workflow.actions import do_claim_reading_task, do_start_reading_process
from worklist.actions import do_create_order, do_register_patient
from worklist.models import Order, Procedure, Station

from . import actions
from .models import Report, ReportExport, ReportTemplate

TEMPLATES = {
    "riverside": [
        (
            "CT chest",
            "CT",
            "CHEST",
            {
                "technique": "Axial CT of the chest from the thoracic inlet to the adrenals, 1 mm reconstructions.",
                "findings": "",
                "impression": "",
            },
            [
                {
                    "name": "Normal chest",
                    "section": "findings",
                    "text": "Lungs are clear. No pleural effusion. "
                    "Heart size normal. No mediastinal or hilar lymphadenopathy.",
                },
                {"name": "No acute finding", "section": "impression", "text": "No acute cardiopulmonary finding."},
            ],
        ),
        (
            "CT head",
            "CT",
            "HEAD",
            {"technique": "Axial CT of the head without contrast.", "findings": "", "impression": ""},
            [
                {
                    "name": "Normal head",
                    "section": "findings",
                    "text": "No intracranial haemorrhage, mass effect or "
                    "midline shift. Ventricles and sulci are normal for age.",
                },
            ],
        ),
        ("Any study", "", "", {"technique": "", "findings": "", "impression": ""}, []),
    ],
    "hillside": [
        (
            "MR brain",
            "MR",
            "",
            {"technique": "Sagittal T1, axial T2, FLAIR and DWI of the brain.", "findings": "", "impression": ""},
            [{"name": "Normal brain", "section": "findings", "text": "Normal brain MR for age."}],
        ),
    ],
}

DEMO_PATIENT = ("RCH-100290", "ZHOU^HUA=周^华", dt.date(1958, 2, 11), "M")
FINDINGS = (
    "A 9 mm solid nodule in the right upper lobe (key image). No other pulmonary nodule. "
    "No pleural effusion. No mediastinal lymphadenopathy."
)
IMPRESSION = "Solitary 9 mm right upper lobe nodule. Recommend CT follow-up in 3 months (Fleischner 2017)."


def _templates() -> None:
    for slug, rows in TEMPLATES.items():
        institution = Institution.objects.get(slug=slug)
        for name, modality, body_part, sections, macros in rows:
            ReportTemplate.objects.get_or_create(
                institution=institution,
                name=name,
                defaults={"modality": modality, "body_part": body_part, "sections": sections, "macros": macros},
            )


def seed() -> list[str]:
    _templates()
    riverside = Institution.objects.get(slug="riverside")
    done = Report.objects.filter(
        institution=riverside, patient_id=DEMO_PATIENT[0], state__in=[Report.State.FINAL, Report.State.AMENDED]
    ).first()
    if done is None:
        done = _signed_demo_report(riverside)
    for export in ReportExport.objects.filter(version__report=done, state=ReportExport.State.PENDING):
        actions.do_run_export(export)
    version = done.versions.order_by("-number").first()
    code = version.verification_code if version else ""
    return [
        "Report templates for Riverside (CT chest, CT head) and Hillside (MR brain)",
        f"Demo CT at Riverside ({DEMO_PATIENT[1].split('=')[0]}, accession {done.accession_number}): "
        f"final report signed by rad@riverside, verification code {code}",
    ]


def _signed_demo_report(riverside: Institution) -> Report:
    radiologist = User.objects.get(username="rad@riverside")
    technologist = User.objects.get(username="tech@riverside")
    patient_id, name, birth_date, sex = DEMO_PATIENT
    patient = Patient.objects.filter(institution=riverside, patient_id=patient_id).first() or do_register_patient(
        riverside, name=name, patient_id=patient_id, birth_date=birth_date, sex=sex, allow_possible_duplicate=True
    )
    order = Order.objects.filter(institution=riverside, patient=patient).first()
    if order is None:
        order = do_create_order(
            riverside,
            patient=patient,
            procedure=Procedure.objects.get(institution=riverside, code="CT-CHEST"),
            station=Station.objects.get(institution=riverside, node__ae_title="RIVERSIDE_CT"),
            scheduled_at=timezone.now() - dt.timedelta(hours=2),
            referring_physician="HUANG^LEI=黄^磊",
            clinical_info="Weight loss and haemoptysis; 40 pack-years.",
            actor=technologist,
        )
    study = Study.objects.filter(institution=riverside, study_instance_uid=order.study_instance_uid).first()
    if study is None:
        study = _archive_image(riverside, order, patient, technologist)
    do_complete_study(study, actor_label="demo", reason="demo study archived")
    study.refresh_from_db()
    task = do_start_reading_process(study).tasks.order_by("created_at").first()
    assert task is not None
    task.refresh_from_db()
    if task.claimed_by_id is None:
        do_claim_reading_task(task, acting_user=radiologist)
    template = ReportTemplate.objects.get(institution=riverside, name="CT chest")
    report, _ = actions.do_create_report(study, acting_user=radiologist, template=template)
    instance = study.series.first().instances.first()  # type: ignore[union-attr]
    do_mark_key_image(acting_user=radiologist, instance=instance, frame=1, note="9 mm RUL nodule")
    report = actions.do_autosave_draft(
        report,
        acting_user=radiologist,
        content={
            **report.draft,
            "findings": FINDINGS,
            "impression": IMPRESSION,
            "key_images": [{"instance": str(instance.pk), "frame": 1, "note": "9 mm RUL nodule"}],
        },
        base_revision=report.draft_revision,
    )
    actions.do_sign_report(report, acting_user=radiologist, password=DEMO_PASSWORD)
    return Report.objects.get(pk=report.pk)


def _archive_image(riverside: Institution, order: Order, patient: Patient, technologist: User) -> Study:
    """One CT slice (pydicom's sample) as the exam's image, sent the way a modality's arrives."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    ds.AccessionNumber = order.accession_number
    ds.StudyInstanceUID = order.study_instance_uid
    ds.StudyDescription = "CT chest without contrast"
    ds.BodyPartExamined = "CHEST"
    ds.ReferringPhysicianName = order.referring_physician
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = timezone.localdate().strftime("%Y%m%d")
    ds.SeriesInstanceUID = UID(f"{order.study_instance_uid}.1")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{order.study_instance_uid}.1.1")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = store_instance(
            path, institution=riverside, source=Source(via="import", label="demo", actor=technologist)
        )
    return Study.objects.select_related("patient", "institution").get(pk=result.instance.series.study_id)
