"""The demo's referral (DESIGN.md, fixed points: demo).

Another Riverside patient's head CT, archived through the ingest service and
referred upward to Central City Hospital: consent recorded and sent, not yet
accepted, so ``coord@central`` finds it in the inbox and ``doc@central`` may
open the CT. Idempotent: the study is the same object each time and the
referral is made once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from archive.ingest import Source, store_instance
from pacs_cloud.models import Institution, User

from .actions import do_create_referral, do_record_consent, do_send_referral
from .models import Referral

REFERRAL_PATIENT = ("RCH-100318", "WU^JIAN=吴^建", "19490730", "M")
REFERRAL_REASON = "Suspected acute subdural haematoma: neurosurgical assessment"


def _referral_ct(riverside: Institution, coordinator: User) -> Any:
    """Another Riverside patient's head CT, archived through the ingest service (idempotent)."""
    patient_id, name, birth, sex = REFERRAL_PATIENT
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth, sex
    ds.IssuerOfPatientID = riverside.patient_id_issuer
    ds.AccessionNumber = "RCHDEMO0318"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
    ds.BodyPartExamined = "HEAD"
    # Fixed UIDs: seeding again sends the identical object, which the archive recognises.
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cloud-pacs demo referral study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cloud-pacs demo referral series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["cloud-pacs demo referral instance"]
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = store_instance(path, institution=riverside, source=Source("import", "demo", actor=coordinator))
    return result.instance.series.study


def seed() -> list[str]:
    """Another Riverside patient's CT referred upward to Central City Hospital: sent, not yet accepted."""
    riverside = Institution.objects.get(slug="riverside")
    central = Institution.objects.get(slug="central")
    coordinator = User.objects.get(username="coord@riverside")
    study = _referral_ct(riverside, coordinator)
    existing = Referral.objects.filter(patient=study.patient, to_institution=central).first()
    if existing is None:
        existing = do_create_referral(
            acting_user=coordinator,
            from_institution=riverside,
            to_institution=central,
            patient=study.patient,
            reason=REFERRAL_REASON,
            urgency=Referral.Urgency.URGENT,
            clinical_summary="76-year-old man on warfarin, fell at home this morning; GCS 14, headache, vomiting once.",
            studies=[study],
        )
        do_record_consent(
            existing, acting_user=coordinator, method=Referral.ConsentMethod.WRITTEN, note="signed by the patient"
        )
        existing = do_send_referral(existing, acting_user=coordinator, reason="bed requested by phone")
    return [
        f"Referral of {study.patient.patient_id} ({riverside.name} → {central.name}): {existing.state}; "
        "coord@central sees it in the inbox, doc@central opens the CT"
    ]
