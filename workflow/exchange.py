"""Image exchange: a receiving hospital imports a shared study into its own archive.

As image exchange portals between hospitals do, the receiver does not keep
looking at the sender's copy: it takes its own, filed under its own patient
record. The receiver first reconciles the patient (picks one of its own
patients, or registers the patient with an identifier it issues); every
instance of the shared study is then read from the archive, its Patient
module (PS3.3 C.7.1.1) replaced by the local patient's, the sender's
identifier kept in Other Patient IDs Sequence (0010,1002), and stored through
the archive's one ingest service at the receiving institution. Study, series
and SOP Instance UIDs stay as they are, so both copies remain the same
study; the sender's stored objects are only read, never touched.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pydicom
from django.db import transaction
from pydicom.dataset import Dataset

from archive.ingest import IngestError, IngestSession, Source, store_instance
from archive.models import Instance, Patient, Study
from archive.storage import get_storage
from pacs_cloud import access, audit
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.models import Institution, Role

from .models import ImportedStudy, StudyShare

IMPORT_ROLES = (Role.REFERRAL_COORDINATOR, Role.RADIOLOGIST)


class ImportRefused(Exception):
    """An import that may not (or could not) happen; ``code`` as for referral refusals."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def active_share(study: Study, institution: Institution | Any) -> StudyShare | None:
    return (
        StudyShare.objects.filter(study=study, institution_id=getattr(institution, "pk", institution))
        .filter(revoked_at__isnull=True)
        .order_by("-granted_at")
        .first()
    )


def patient_candidates(institution: Institution, source: Patient, *, limit: int = 10) -> list[Patient]:
    """The receiver's patients who may be the shared study's patient: same name and birth date
    first, then anyone whose name matches."""
    from worklist.actions import find_patients, likely_duplicates

    found = likely_duplicates(institution, source.name, source.birth_date)
    family = source.name.split("=")[0].split("^")[0].strip()
    if family:
        found += [p for p in find_patients(institution, family, limit=limit) if p not in found]
    return found[:limit]


def resolve_local_patient(
    institution: Institution,
    source: Patient,
    *,
    acting_user: Any,
    pk: Any = None,
    patient_id: str = "",
    name: str = "",
    birth_date: dt.date | None = None,
    sex: str = "",
    request: Any = None,
) -> Patient:
    """The receiver's own patient for an import: one it picked, else found or registered.

    Registering defaults to the shared study's demographics with an
    identifier issued by the receiver (``WORKLIST_PATIENT_ID_FORMAT``).
    Raises ``django.core.exceptions.ValidationError`` for a clash.
    """
    from worklist.actions import do_find_or_register_patient

    return do_find_or_register_patient(
        institution,
        pk=pk,
        patient_id=patient_id,
        name=name or source.name,
        birth_date=birth_date if birth_date is not None else source.birth_date,
        sex=sex or source.sex,
        actor=acting_user,
        request=request,
        # The receiver reconciles on purpose: it saw its candidates and chose to register.
        allow_possible_duplicate=True,
    )


def _relabel(ds: Dataset, patient: Patient, source: Patient) -> None:
    """The local patient's identity in the Patient module; the sender's identifier kept as another ID."""
    if not (patient.name + patient.patient_id).isascii():
        # Values are held decoded: writing them all as UTF-8 keeps every other text intact.
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientName = patient.name
    ds.PatientBirthDate = dicom_datetime.format_da(patient.birth_date)
    ds.PatientSex = patient.sex
    other = Dataset()
    other.PatientID = source.patient_id
    other.IssuerOfPatientID = source.issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def do_import_shared_study(study: Study, *, patient: Patient, acting_user: Any, request: Any = None) -> ImportedStudy:
    """Copy a study shared with ``patient``'s institution into that institution's archive.

    Preconditions checked here: the actor is a referral coordinator or
    radiologist of the receiving institution, and the study is shared with it
    right now. Importing again under the same patient returns the earlier
    import (the ingest service recognises identical objects).
    """
    receiver = patient.institution
    if not access.has_role(acting_user, receiver, *IMPORT_ROLES):
        raise ImportRefused("Only the receiving institution's coordinators and radiologists import.", "forbidden")
    if study.institution_id == receiver.pk:
        raise ImportRefused("The study is already in this institution's archive.")
    share = active_share(study, receiver)
    if share is None:
        raise ImportRefused("Only a study shared with your institution can be imported.", "forbidden")
    previous = ImportedStudy.objects.filter(source_study=study, institution=receiver).first()
    if previous is not None and previous.patient_id != patient.pk:
        raise ImportRefused(f"This study was imported already, for patient {previous.patient.patient_id}.", "bad_state")
    source_patient = study.patient
    storage = get_storage()
    session = IngestSession(Source("import", f"shared by {study.institution.slug}"[:64], actor=acting_user, address=""))
    instances = list(Instance.objects.filter(series__study=study).order_by("series_id", "instance_number", "pk"))
    copy: Study | None = None
    with tempfile.TemporaryDirectory(prefix="pacs-import-") as folder:
        for instance in instances:
            with storage.open(instance.storage_key) as handle:
                ds = pydicom.dcmread(handle)
            _relabel(ds, patient, source_patient)
            path = Path(folder) / f"{instance.pk}.dcm"
            ds.save_as(path, enforce_file_format=True)
            try:
                result = store_instance(path, institution=receiver, session=session)
            except IngestError as error:
                raise ImportRefused(f"The archive refused {instance.sop_instance_uid}: {error.reason}") from error
            finally:
                path.unlink(missing_ok=True)
            copy = result.instance.series.study
    if copy is None:
        raise ImportRefused("The shared study has no images to import.")
    with transaction.atomic():
        imported, created = ImportedStudy.objects.get_or_create(
            source_study=study,
            institution=receiver,
            defaults={
                "study": copy,
                "patient": patient,
                "share": share,
                "instances": len(instances),
                "imported_by": acting_user,
            },
        )
        audit.record(
            "sharing.import",
            request=request,
            actor=acting_user,
            institution=receiver,
            object_type="archive.study",
            object_id=copy.pk,
            patient_id=patient.patient_id,
            detail={
                "source_study": str(study.pk),
                "source_institution": str(study.institution_id),
                "source_patient_id": source_patient.patient_id,
                "share": str(share.pk),
                "instances": len(instances),
                "stored": session.stored,
                "again": not created,
            },
        )
    return imported
