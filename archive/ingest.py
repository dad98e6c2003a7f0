"""The one ingest service every entry point uses (C-STORE, STOW-RS, media import, edge).

``store_instance`` parses and validates one DICOM file, stores its bytes
durably, indexes it in one transaction and announces it after commit. When it
returns, the object is durable and indexed; a caller may acknowledge it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydicom.errors import InvalidDicomError

from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.uids import InvalidUID, require_uid
from pacs_cloud.models import Institution

from . import signals
from .models import Instance, Patient, Series, Study
from .storage import get_storage, object_key


class IngestError(Exception):
    """The instance was refused; ``reason`` is shown to the sender."""

    def __init__(self, reason: str, *, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class StoreResult:
    instance: Instance
    created: bool  # False: the identical object was already archived


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def read_dataset(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=False, defer_size=1024)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError) as exc:
        raise IngestError(f"not a readable DICOM file: {exc}", code="unreadable") from exc


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _safe_date(ds: pydicom.Dataset, keyword: str) -> Any:
    try:
        return dicom_datetime.parse_da(_text(ds, keyword))
    except dicom_datetime.InvalidDicomDateTime:
        return None


def _safe_time(ds: pydicom.Dataset, keyword: str) -> Any:
    try:
        return dicom_datetime.parse_tm(_text(ds, keyword))
    except dicom_datetime.InvalidDicomDateTime:
        return None


def json_metadata(ds: pydicom.Dataset) -> dict:
    """DICOM JSON (PS3.18 F.2) without bulk data; pixel data becomes a BulkDataURI."""
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda element: "")


def store_instance(path: Path, *, institution: Institution) -> StoreResult:
    """Archive the DICOM file at ``path`` for ``institution``.

    Raises :class:`IngestError` for anything that must be refused; nothing is
    stored or indexed then.
    """
    size = path.stat().st_size
    if size > settings.MAX_INSTANCE_BYTES:
        raise IngestError(f"{size} bytes is over the {settings.MAX_INSTANCE_BYTES}-byte limit", code="too_large")
    ds = read_dataset(path)
    try:
        study_uid = require_uid(_text(ds, "StudyInstanceUID"), "Study Instance UID")
        series_uid = require_uid(_text(ds, "SeriesInstanceUID"), "Series Instance UID")
        sop_uid = require_uid(_text(ds, "SOPInstanceUID"), "SOP Instance UID")
        sop_class = require_uid(_text(ds, "SOPClassUID"), "SOP Class UID")
    except InvalidUID as exc:
        raise IngestError(str(exc), code="bad_uid") from exc
    transfer_syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    digest = sha256_of(path)
    key = object_key(institution.pk, study_uid, series_uid, sop_uid)

    existing = Instance.objects.filter(series__study__institution=institution, sop_instance_uid=sop_uid).first()
    if existing is not None:
        if existing.sha256 == digest:
            return StoreResult(existing, created=False)
        raise IngestError("a different object with this SOP Instance UID is already archived", code="conflict")

    get_storage().put_file(key, path, digest)
    now = timezone.now()
    with transaction.atomic():
        patient, _ = Patient.objects.get_or_create(
            institution=institution,
            patient_id=_text(ds, "PatientID"),
            issuer=_text(ds, "IssuerOfPatientID"),
            defaults={
                "name": _text(ds, "PatientName"),
                "name_search": _text(ds, "PatientName").upper(),
                "birth_date": _safe_date(ds, "PatientBirthDate"),
                "sex": _text(ds, "PatientSex"),
            },
        )
        study, study_created = Study.objects.get_or_create(
            institution=institution,
            study_instance_uid=study_uid,
            defaults={
                "patient": patient,
                "study_date": _safe_date(ds, "StudyDate"),
                "study_time": _safe_time(ds, "StudyTime"),
                "accession_number": _text(ds, "AccessionNumber")[:16],
                "study_id": _text(ds, "StudyID")[:16],
                "description": _text(ds, "StudyDescription")[:64],
                "referring_physician": _text(ds, "ReferringPhysicianName"),
            },
        )
        if study.patient_id != patient.pk:
            raise IngestError("the study is already archived under another patient", code="inconsistent")
        series, series_created = Series.objects.get_or_create(
            study=study,
            series_instance_uid=series_uid,
            defaults={
                "modality": _text(ds, "Modality")[:16],
                "series_number": ds.get("SeriesNumber"),
                "description": _text(ds, "SeriesDescription")[:64],
                "body_part": _text(ds, "BodyPartExamined")[:64],
            },
        )
        instance = Instance.objects.create(
            series=series,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            instance_number=ds.get("InstanceNumber"),
            transfer_syntax_uid=transfer_syntax,
            rows=ds.get("Rows"),
            columns=ds.get("Columns"),
            number_of_frames=int(ds.get("NumberOfFrames") or 1),
            size=size,
            sha256=digest,
            storage_key=key,
            metadata=json_metadata(ds),
            received_at=now,
        )
        Series.objects.filter(pk=series.pk).update(num_instances=series.num_instances + 1)
        modalities = set(filter(None, study.modalities.split("\\"))) | {series.modality}
        Study.objects.filter(pk=study.pk).update(
            num_instances=study.num_instances + 1,
            num_series=study.num_series + (1 if series_created else 0),
            modalities="\\".join(sorted(filter(None, modalities))),
            last_instance_at=now,
        )
        if study_created:
            transaction.on_commit(lambda: signals.study_received.send(Study, study=study))
        transaction.on_commit(lambda: signals.instance_stored.send(Instance, instance=instance, created=True))
    return StoreResult(instance, created=True)
